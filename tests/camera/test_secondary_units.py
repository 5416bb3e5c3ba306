"""Secondary classifiers without a daemon: crops are views of the detector's frame (padded only
past its edge) shaped by the crop policy; ``edged check`` reports what would not work with file,
line and key; the largest frame message with classified detections stays under its size cap; an
object's secondary results are per classifier means over its crops."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from edged.config.check import check
from edged.config.loader import ConfigError, load_config
from edged.models.manifest import load_manifest
from edged.mqtt import messages
from edged.preprocess.crops import cut, prepare_crop, region
from edged.sources.camera.tracker import Tracker
from helpers import REPO, schema_validator


def frame() -> np.ndarray:
    f = np.zeros((100, 200, 3), np.uint8)
    f[..., 0] = np.arange(200, dtype=np.uint8)[np.newaxis]  # red encodes x, green y
    f[..., 1] = np.arange(100, dtype=np.uint8)[:, np.newaxis]
    return f


def test_a_crop_inside_the_frame_is_a_view_and_past_its_edge_is_padded_black():
    f = frame()
    box = [50 / 200, 20 / 100, 90 / 200, 80 / 100]  # 40 x 60 px, centre (70, 50)
    x0, y0, x1, y1 = region(box, 200, 100, "square", 0.0)
    assert (x1 - x0, y1 - y0) == (60, 60) and (x0 + x1) / 2 == 70
    inner = cut(f, x0, y0, x1, y1)
    assert np.shares_memory(inner, f) and inner[0, 0, 0] == x0 and inner[0, 0, 1] == y0
    # with a margin the square reaches above the frame: padded with black, the crop copied
    x0, y0, x1, y1 = region(box, 200, 100, "square", 0.5)
    assert y0 < 0 and (x1 - x0) == (y1 - y0) == 120
    padded = cut(f, x0, y0, x1, y1)
    assert not np.shares_memory(padded, f) and padded.shape == (120, 120, 3)
    assert not padded[: -y0].any() and padded[-y0, 0, 1] == 0 and padded[-y0, 0, 0] == x0
    # letterbox and stretch stay inside the frame
    assert region(box, 200, 100, "stretch", 1.0) == (10, 0, 130, 100)  # 40 px + 40 each side; y clipped


def test_the_crop_policy_shapes_the_classifier_input():
    manifest = load_manifest(REPO / "engines" / "cropcls").manifest
    f = np.full((100, 200, 3), 200, np.uint8)
    wide = [0.35, 0.4, 0.65, 0.6]  # 60 x 20 px: its square (60 x 60) lies inside the frame
    black = (0 - 0.485) / 0.229  # a black pixel's red channel after normalization
    tensors = {p: prepare_crop(f, wide, manifest.input, manifest.preprocess, p, 0.0)[0]
               for p in ("square", "letterbox", "stretch")}
    assert all(t.shape == (3, 128, 128) and t.dtype == np.float32 for t in tensors.values())
    assert np.isclose(tensors["letterbox"][0, 0, 64], black) and not np.isclose(tensors["letterbox"][0, 64, 64], black)
    assert not np.isclose(tensors["stretch"][0], black).any()  # the whole input is the box
    assert np.isclose(tensors["square"][0, 0, 64], (200 / 255 - 0.485) / 0.229)  # square context from the frame


def _config(tmp_path: Path, cameras: str) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(textwrap.dedent(f"""\
        state_dir: {tmp_path / 'state'}
        cache_dir: {tmp_path / 'cache'}
        model_repository: {REPO / 'engines'}
        models: [{{name: centerface}}, {{name: detector}}, {{name: cropcls}}]
        cameras:
          - name: hall
            uri: rtsp://127.0.0.1/cam0
            models:
        """) + textwrap.indent(textwrap.dedent(cameras), "      "))
    return path


def _two_cameras(tmp_path: Path) -> Path:
    path = _config(tmp_path, """\
        - name: centerface
          secondary:
            - {model: cropcls, labels: [face, person]}
        """)
    with open(path, "a") as f:
        f.write("  - name: yard\n    uri: rtsp://127.0.0.1/cam1\n    models:\n      - name: detector\n"
                "        secondary:\n          - {model: centerface, labels: [person]}\n")
    return path


def test_check_finds_what_a_secondary_cannot_do_with_file_line_and_key(tmp_path):
    path = _two_cameras(tmp_path)
    cfg = load_config(path)
    errors = check(cfg).errors
    assert f"{path}:11: cameras[0].models[0].secondary[0].labels: person not a label of centerface" \
        " (it has: face)" in errors, errors
    assert any(e.startswith(f"{path}:17: cameras[1].models[0].secondary[0].model: centerface is not a classifier")
               for e in errors), errors
    # a secondary that is not among the served models, a crop policy that does not exist
    with pytest.raises(ConfigError, match="model.s. facecls not in models"):
        load_config(_config(tmp_path, "- {name: centerface, secondary: [{model: facecls, labels: [face]}]}\n"))
    with pytest.raises(ConfigError, match=r"edged.yaml:9: cameras\[0\].models\[0\].secondary\[0\].crop: Input should be"):
        load_config(_config(tmp_path, "- {name: centerface, secondary: [{model: cropcls, labels: [face], crop: oval}]}\n"))
    good = load_config(_config(tmp_path, "- {name: centerface, secondary: [{model: cropcls, labels: [face]}]}\n"))
    assert not [e for e in check(good).errors if "secondary" in e]


def test_the_largest_classified_frame_stays_under_the_cap_and_more_is_refused():
    model = {"name": "m" * 64, "version": "v" * 32, "sha256": "f" * 64, "backend": "onnxruntime", "precision": "fp32",
             "device": "cpu", "clinical": False}
    det = {"label": "L" * 64, "score": 0.123456789, "box": [0.123456789] * 4, "object": "a" * 32}
    scores = {f"{i}{'l' * 31}": 0.123456789 for i in range(4)}
    classified = {**det, "secondary": {"a" * 32: scores, "b" * 32: scores}}
    payload = {"schema": "edged.detections/v1", "node": "n" * 64, "camera": "c" * 48,
               "time": "2026-11-29T20:30:40.094Z", "clinical": False, "model": model,
               "frame": {"seq": 2 ** 63, "captured": "2026-11-29T20:30:40.094Z", "width": 8192, "height": 8192,
                         "age_ms": 123456.7},
               "detections": [classified] * 16 + [det] * 48,
               "timings_ms": {"preprocess": 1.123, "queue": 1.123, "inference": 1.123, "batch_size": 8,
                              "age_at_inference": 1234.5, "secondary_wait": 1234.5}}
    validator = schema_validator("detections")
    validator.validate(payload)
    assert len(messages.encode_capped("detections", payload)) <= messages.MAX_BYTES["detections"]
    for too_many in ([classified] * 17, [classified] + [det] * 64,
                     [{**det, "secondary": {"a": {**scores, "x": 0.1}}}]):
        assert not validator.is_valid({**payload, "detections": too_many})


def test_objects_carry_mean_scores_per_classifier_and_their_crop_count():
    t = Tracker(min_frames=1)
    det = {"label": "face", "score": 0.9, "box": [0.1, 0.1, 0.3, 0.3]}
    (kind, obj), = t.update([det], 1.0)
    assert kind == "new" and t.assigned[id(det)] == obj.id and "secondary" not in obj.summary()
    obj.classified("cropcls", {"class_a": 0.2, "class_b": 0.8})
    obj.classified("cropcls", {"class_a": 0.4, "class_b": 0.6})
    summary = obj.summary()
    assert summary["secondary"] == {"cropcls": {"scores": {"class_a": 0.3, "class_b": 0.7}, "crops": 2}}
    schema_validator("event").validate(messages.event("n", "object", "new", camera="hall", model="centerface",
                                                      object=summary))
    # a change of the top label is news for an update event (after object_update_s)
    obj.classified("cropcls", {"class_a": 1.0, "class_b": 0.0})
    obj.classified("cropcls", {"class_a": 1.0, "class_b": 0.0})
    assert [k for k, _ in t.update([{**det}], 7.0)] == ["update"]


def test_selftest_times_detector_and_secondary_per_frame(tmp_path):
    from edged.selftest.secondary import secondary_rows

    cfg = load_config(_config(tmp_path, "- {name: centerface, secondary: [{model: cropcls, labels: [face]}]}\n"))
    (row,) = secondary_rows(cfg, tmp_path / "selftest-cache", repeats=1)
    assert (row.group, row.target, row.status) == ("secondary", "centerface + cropcls", "PASS"), row
    assert set(row.data["ms_per_frame"]) == {0, 1, 4, 16} and all(v > 0 for v in row.data["ms_per_frame"].values())
    assert "onnxruntime" in row.data["backends"]["cropcls"]
    (skip,) = secondary_rows(load_config(_config(tmp_path, "- centerface\n")), tmp_path, repeats=1)
    assert skip.status == "SKIP" and "no camera has secondary" in skip.note


def test_a_secondary_is_an_ordinary_model_for_tensorrt_and_dla(tmp_path):
    """Nothing special-cases secondaries out: their DLA engines count against a core's budget and
    `engines build --all` takes them, since they are entries of models: like any other."""
    from edged.backends.tensorrt.dla import budget_problems, requests_from_config

    path = _config(tmp_path, "- {name: centerface, secondary: [{model: cropcls, labels: [face]}]}\n")
    text = path.read_text().replace("{name: cropcls}", "{name: cropcls, backend: tensorrt, dla_core: 0}")
    path.write_text(text.replace("{name: centerface}", "{name: centerface, backend: tensorrt, dla_core: 0}"))
    cfg = load_config(path)
    manifests = {e.name: load_manifest(cfg.manifest_path(e)) for e in cfg.models}
    requests = requests_from_config(cfg, manifests)
    assert {(r.model, r.core, r.engines) for r in requests} >= {("cropcls", 0, 16), ("centerface", 0, 4)}
    assert any("cropcls" in p for p in budget_problems(requests)), budget_problems(requests)
