"""`facerec models`: pinned checksums, idempotence, and the recorded parity figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

pytest.importorskip("torch")

from export.setup_models import _up_to_date, setup_models
from export.sources import SOURCES, fetch_weights, sha256_of
from facerec.models import ONNX_FILES, facerec_home, models_dir


def test_second_run_does_nothing() -> None:
    out = models_dir()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = setup_models(progress=False)
    assert report["steps"] == [{"step": "all", "status": "up to date"}]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_manifest_records_parity_within_tolerance() -> None:
    manifest = json.loads((models_dir() / "manifest.json").read_text())
    assert manifest["parity"]["embedding_cosine_min"] >= 0.99999
    assert manifest["parity"]["mtcnn_max_abs_diff_px"] <= 0.5
    assert manifest["int8"]["cosine_vs_fp32_min"] > 0.99
    assert manifest["fp16"]["cosine_vs_fp32_min"] >= 0.9999
    assert manifest["fp16"]["cosine_vs_pytorch_min"] >= 0.9999
    assert manifest["int8"]["cosine_vs_pytorch_min"] > 0.99
    for precision in ("fp32", "fp16"):  # the serving graphs compute what the raw ones do
        assert manifest["serving"][precision]["cosine_vs_raw_graph_min"] >= 0.99999
    assert manifest["serving"]["int8"]["cosine_vs_raw_graph_min"] >= 0.999
    assert set(manifest["outputs"]) == set(ONNX_FILES.values())


def test_tensorrt_engine_build_says_why_it_is_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from export import tensorrt_engine

    reason = tensorrt_engine.missing()
    if reason is None:
        pytest.skip("TensorRT and a GPU are here: this test covers only machines without them")
    assert tensorrt_engine.main(["--out", str(tmp_path)]) == 0
    assert tensorrt_engine.main(["--out", str(tmp_path), "--require"]) == 2
    assert f"skipped: no TensorRT engine built here: {reason}" in capsys.readouterr().err
    assert not (tmp_path / "model.plan").exists()


def test_a_changed_output_is_not_up_to_date(tmp_path: Path) -> None:
    manifest = json.loads((models_dir() / "manifest.json").read_text())
    for name in ONNX_FILES.values():
        os.symlink(models_dir() / name, tmp_path / name)
    assert _up_to_date(manifest, tmp_path)
    victim = tmp_path / ONNX_FILES["rnet"]
    victim.unlink()
    victim.write_bytes(b"not the model")
    assert not _up_to_date(manifest, tmp_path)


def test_corrupted_weight_file_is_extracted_again(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    source = next(s for s in SOURCES if s.requirement.startswith("facenet-pytorch"))
    os.symlink(facerec_home() / "downloads" / source.archive, downloads / source.archive)
    # Only this source's files are checked here; give the other source verified copies.
    (tmp_path / "weights").mkdir()
    for other in SOURCES:
        if other is not source:
            for wf in other.files:
                os.symlink(facerec_home() / "weights" / wf.name, tmp_path / "weights" / wf.name)
    paths = fetch_weights(tmp_path)
    pnet = paths["pnet.pt"]
    pinned = next(wf.sha256 for wf in source.files if wf.name == "pnet.pt")
    assert sha256_of(pnet) == pinned
    pnet.write_bytes(pnet.read_bytes()[:-10] + b"0123456789")
    assert sha256_of(pnet) != pinned
    fetch_weights(tmp_path)
    assert sha256_of(pnet) == pinned


def test_int8_embedder_keeps_its_first_and_last_layers_in_float() -> None:
    manifest = json.loads((models_dir() / "manifest.json").read_text())
    names = manifest["int8"]["float_layers"]
    graph = onnx.load(str(models_dir() / ONNX_FILES["facenet128-int8"])).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    by_name = {n.name: n for n in graph.node}
    assert len(names) == 2 and by_name[names[0]].op_type == "Conv"
    for name in names:
        weight = by_name[name].input[1]
        assert weight in floats and weight not in produced_by  # not dequantised int8
    quantised = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(quantised) > 100  # everything else is
