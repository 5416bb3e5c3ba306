"""A model with two decoded outputs (the tiny DenseNet plus a softmax head) serves end to end,
in-process and through the isolated worker, and every result carries both decoded outputs."""

from __future__ import annotations

import math

import pytest

from helpers import send_file, small_cr


@pytest.fixture(scope="module")
def two_head_repo(tmp_path_factory):
    from edged.models.synth import write_model

    repo = tmp_path_factory.mktemp("engines2")
    write_model("tiny-2head", repo / "chexnet-2head")
    return repo


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_both_outputs_reach_the_result(daemon_factory, collector, tmp_path, two_head_repo, backend):
    d = daemon_factory(repo=two_head_repo, models=[{"name": "chexnet-2head", "backend": backend}]).start()
    assert send_file(d.port, small_cr(tmp_path / "cr.dcm")) == 0x0000
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0
    (result,) = collector.results()
    assert result["model"]["backend"] == "onnxruntime"
    outputs = result["outputs"]
    assert set(outputs) == {"logits", "view"}
    assert outputs["logits"]["decode"] == "sigmoid" and outputs["logits"]["scores"] == result["scores"]
    assert len(result["scores"]) == 14 and all(0 < v < 1 for v in result["scores"].values())
    view = outputs["view"]
    assert view["decode"] == "softmax" and set(view["scores"]) == {"PA", "AP", "LATERAL"}
    assert math.isclose(sum(view["scores"].values()), 1.0, abs_tol=1e-5)
    if backend == "auto":
        assert "isolated worker" in d.log.read_text()
