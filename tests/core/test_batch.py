"""Batch jobs in worker processes give the in-process results, in order, errors included."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerec.batch import ProcessBatchRunner
from facerec.pipeline import FacePipeline, PipelineConfig
from tests.support.data import lfw_image, lfw_path


def test_processes_match_in_process_results(pipeline: FacePipeline, tmp_path: Path) -> None:
    keys = ["Abel_Pacheco_0001", "Dean_Barker_0001", "Ann_Veneman_0003", "Amber_Tamblyn_0002"]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image\n" * 5)
    paths = [lfw_path(keys[0]), bad, *(lfw_path(k) for k in keys[1:])]
    with ProcessBatchRunner(PipelineConfig(), processes=2) as runner:
        results = list(runner.run(paths, pad=50, primary_only=True, chunk=2))
    assert [r.path for r in results] == paths
    assert results[1].error is not None and results[1].error.code == "not_an_image"
    good = [r for r in results if r.error is None]
    expected = pipeline.analyze([lfw_image(k) for k in keys], primary_only=True)
    for got, want in zip(good, expected, strict=True):
        assert got.faces is not None
        a, b = got.faces.faces[0], want.faces[0]
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        assert a.embedding is not None and b.embedding is not None
        assert float(a.embedding @ b.embedding) > 0.99999
    assert runner.seconds["detect"] > 0 and runner.seconds["decode"] > 0
