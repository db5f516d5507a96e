"""The generated ``fusion_ceiling`` and ``fusion_tail`` tables (docs/benchmarks.md): each
half's DIR per weight, and the top strangers of each half with both parts' scores."""

from __future__ import annotations

import json
from pathlib import Path

from tests.project.test_docs import load_hook


def _stranger(half: int, n: int) -> dict[str, object]:
    return {
        "half": half,
        "probe": f"P{half}_{n}",
        "subject": f"S{n}",
        "fused": 0.9 - n / 100,
        "cosine": [0.8, 0.95],
        "z": [5.44, -0.06],
    }


def test_the_tables_read_each_half_and_both_parts(tmp_path: Path) -> None:
    tables = load_hook("results_tables")
    doc = {
        "parts": ["facenet128", "dlib128"],
        "ceiling": [
            {
                "facenet_weight": 0.1,
                "dir_by_half": [{"0.001": 0.7641, "0.01": 0.9}, {"0.001": 0.77, "0.01": 0.91}],
            }
        ],
        # seven per half: only the first five of each are shown
        "strangers": [_stranger(h, n) for h in (0, 1) for n in range(7)],
    }
    (tmp_path / "fusion_tail.json").write_text(json.dumps(doc))
    ceiling = tables.fusion_ceiling(tmp_path).splitlines()
    assert ceiling[2] == "| 0.10 | 76.4 % / 77.0 % | 90.0 % / 91.0 % |"
    tail = tables.fusion_tail(tmp_path).splitlines()
    assert (
        tail[0]
        == "| half | stranger → gallery subject | fused | facenet128 cosine | dlib128 cosine |"
    )
    assert len(tail) == 2 + 10
    assert tail[2] == "| 0 | P0_0 → S0 | 0.900 | 0.800 (z +5.4) | 0.950 (z -0.1) |"
    assert tail[7].startswith("| 1 | P1_0 → S0 |")
