"""The generated ``fusion_scaling`` table (docs/benchmarks.md): the fused model's identify
path beside the single model's of the same gallery size, and where its time goes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.project.test_docs import _search_row, load_hook


def _fused_row(gallery: int, settle: float | None) -> dict[str, object]:
    """One ``perf.search_scaling --model facenet128+dlib128`` row."""
    row = _search_row(gallery, 128, 1.0)
    split = {
        k: {"p50": v, "p95": v, "mean": v}
        for k, v in (
            ("index_search", 5.0),
            ("sql", 1.0),
            ("decrypt", 0.25),
            ("rank", 0.5),
            ("other", 0.25),
            ("total", 7.0),
        )
    }
    return row | {
        "identify_path_ms": {"p50": 7.0, "p95": 11.0, "p99": 15.0, "mean": 7.5},
        "identify_split_ms": split,
        "identify_rank1": 0.999,
        "settle_seconds": settle,
    }


def test_fused_rows_sit_beside_the_single_model_of_the_same_size(tmp_path: Path) -> None:
    tables = load_hook("results_tables")
    fused, single = tmp_path / "search_scaling_fused", tmp_path / "search_scaling" / "after_fix"
    fused.mkdir(parents=True)
    single.mkdir(parents=True)
    rows = [_fused_row(100_000, None), _fused_row(1_000_000, 600.0)]
    (fused / "search_scaling_server_hnsw.json").write_text(json.dumps({"rows": rows}))
    one = [_search_row(1_000_000, 64, 1.0) | {"settle_seconds": 900.0}]
    (single / "search_scaling_server_hnsw.json").write_text(json.dumps({"rows": one}))
    lines = tables.fusion_scaling(tmp_path).splitlines()
    header, at_100k, at_1m = lines[0], lines[2], lines[3]
    assert "ef 128" in header
    # no single-model row at 100k: its cell stays empty
    assert at_100k.startswith("| 100k |  | 7.0 / 11.0 / 15.0 ms (did not settle) |")
    assert at_1m.startswith(
        "| 1M | 2.0 / 4.0 / 9.0 ms (settled) | 7.0 / 11.0 / 15.0 ms (settled) |"
    )
    assert "5.0 / 1.0 / 0.3 / 0.5 / 0.3 ms (means 5.0 / 1.0 / 0.3 / 0.5 / 0.3)" in at_1m
    assert "| 0.999 |" in at_1m
