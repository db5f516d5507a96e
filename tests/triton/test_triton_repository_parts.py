"""``facerec triton repo`` over an earlier repository: a single-model repository written
where a fused one was leaves none of the fused model's second part (tritonserver would load
it beside the new models), and models it did not generate stay."""

from __future__ import annotations

from pathlib import Path

from facerec.triton.repository import write_repository
from tests.support.data import FUSED


def test_a_single_model_repository_over_a_fused_one_drops_the_second_part(
    tmp_path: Path,
) -> None:
    fused = write_repository("cpu", tmp_path, model=FUSED)
    assert {"aligner_dlib128", "embedder_dlib128"} <= set(fused)
    mine = tmp_path / "embedder_mine"  # someone's own model, of a name like a part's
    (mine / "1").mkdir(parents=True)
    (mine / "config.pbtxt").write_text('name: "embedder_mine"\nbackend: "onnxruntime"\n')
    single = write_repository("cpu", tmp_path)
    on_disk = {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert on_disk == set(single) | {"embedder_mine"}
    assert (mine / "config.pbtxt").is_file()
    again = write_repository("cpu", tmp_path, model=FUSED)  # and back
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == set(again) | {"embedder_mine"}
