"""Where a DLA engine's layers really run: the engine inspector, or a prediction where it is missing.

Runs in the builder process (Python 3.6 syntax, loaded by path from ``trt_build.py``); the daemon
imports it too (``edged.backends.tensorrt.trt_placement``) to read placements back.

TensorRT moves layers DLA cannot run to the GPU silently (GPU fallback), and splits the network
into one DLA subgraph per run of consecutive DLA layers; each subgraph is one DLA *loadable*, and
a DLA core holds at most 16 at once. ``IBuilderConfig.can_run_on_DLA`` is only a prediction made
before the build. From TensorRT 8.2 on, a plan built with ``ProfilingVerbosity.DETAILED`` tells
the truth through ``IEngineInspector``: DLA subgraphs appear as ``{ForeignNode[first...last]}``
layers, everything else ran on the GPU. So the report is the inspector's where it exists
(``source: inspector``) and the prediction only where it does not (TensorRT 8.0, or a plan the
inspector cannot describe), and always says which, with the reason.

Classifying an inspector layer: a ``LayerType`` naming DLA, or a ``{ForeignNode[...]}`` that is
not a Myelin (GPU) graph, is a DLA subgraph; reformatting copies around it are neither DLA nor a
fallback. The exact JSON a Jetson prints is checked only on a device: ``edged selftest`` puts
the raw layer list in its report.
"""
import json

FOREIGN = "{ForeignNode["


def predict(config, layers, dla_core):
    """The ``can_run_on_DLA`` prediction: layers per device and the expected DLA subgraphs."""
    gpu, runs, run = [], 0, False
    for layer in layers:
        if config.can_run_on_DLA(layer):
            if not run:
                runs += 1
            run = True
        else:
            gpu.append([layer.name, str(layer.type).split(".")[-1]])
            run = False
    return {"source": "prediction", "dla_core": dla_core, "layers": len(layers), "dla": len(layers) - len(gpu),
            "gpu": len(gpu), "gpu_layers": gpu, "dla_subgraphs": runs}


def classify(layer):
    """``dla``, ``gpu``, ``reformat``, or None when the layer carries no detail (a bare name)."""
    if not isinstance(layer, dict):
        return None
    kind = str(layer.get("LayerType", "")).lower()
    name = str(layer.get("Name", ""))
    if "dla" in kind:
        return "dla"
    if kind in ("reformat", "noop") or name.startswith("Reformatting CopyNode"):
        return "reformat"
    if name.startswith(FOREIGN) and "myelin" not in kind:
        return "dla"
    return "gpu"


def from_inspector(info_json, prediction):
    """The placement an engine's inspector reports (JSON of ``get_engine_information``), or None
    with the reason when it carries no per-layer detail."""
    try:
        layers = json.loads(info_json).get("Layers") or []
    except (ValueError, AttributeError) as exc:
        return None, "inspector output is not JSON (%s)" % exc
    kinds = [classify(layer) for layer in layers]
    if not layers or None in kinds:
        return None, "the plan carries no detailed layer information (ProfilingVerbosity.DETAILED not in effect)"
    dla = [layer["Name"] for layer, k in zip(layers, kinds) if k == "dla"]
    gpu = [[layer.get("Name", "?"), layer.get("LayerType", "?")] for layer, k in zip(layers, kinds) if k == "gpu"]
    return {"source": "inspector", "dla_core": prediction["dla_core"], "engine_layers": len(layers),
            "dla_subgraphs": len(dla), "dla_nodes": dla, "gpu": len(gpu), "gpu_layers": gpu,
            "reformat": kinds.count("reformat"), "dla": len(dla),
            "layers_raw": [[layer.get("Name"), layer.get("LayerType")] for layer in layers[:200]],
            "prediction": prediction}, None


def inspect_plan(trt, logger, plan, dla_core, prediction):
    """Deserialize ``plan`` on ``dla_core`` and read its placement; the prediction when impossible.

    Never raises: a placement report must not fail a build that succeeded.
    """
    if not hasattr(trt, "LayerInformationFormat"):
        return dict(prediction, reason="TensorRT %s has no IEngineInspector (8.2+)" % trt.__version__)
    engine = None
    try:
        runtime = trt.Runtime(logger)
        runtime.DLA_core = int(dla_core)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            return dict(prediction, reason="the inspector could not load the plan")
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        placement, why = from_inspector(info, prediction)
        return placement if placement is not None else dict(prediction, reason=why)
    except Exception as exc:
        return dict(prediction, reason="engine inspector failed: %s: %s" % (type(exc).__name__, exc))
    finally:
        del engine  # releases the DLA loadables this took


def summary(p):
    """One line for logs and progress."""
    if p.get("source") == "inspector":
        return ("DLA%s: %d DLA subgraph(s), %d layer(s) on the GPU (engine inspector)"
                % (p["dla_core"], p["dla_subgraphs"], p["gpu"]))
    return ("DLA%s: %d of %d layers on DLA, %d on the GPU (predicted: %s)"
            % (p["dla_core"], p["dla"], p["layers"], p["gpu"], p.get("reason", "no inspector")))
