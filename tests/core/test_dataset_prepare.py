"""facerec prepare-dataset: the crops serving cuts, both layouts, and bad input with
nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerec.dataset.layout import DatasetError, scan_source
from facerec.dataset.prepare import PrepareOptions, prepare_dataset
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.selection import primary_face
from tests.support.cli import run_cli
from tests.support.data import DATA

GALLERY = DATA / "gallery"


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "crops"
    prepare_dataset(
        GALLERY, out, PipelineConfig(), PrepareOptions(pad=50, processes=2), progress=False
    )
    return out


def test_flat_lfw_layout_gives_identity_folders_and_a_manifest(prepared: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["layout"] == "flat"
    assert manifest["kept"] == 40 and manifest["identities"] == 8 and manifest["skipped"] == 0
    folders = sorted(p.name for p in prepared.iterdir() if p.is_dir())
    assert folders[0] == "Ben_Affleck" and len(folders) == 8
    assert len(list((prepared / "John_Kerry").glob("*.png"))) == 5
    assert _leftovers(prepared.parent) == []


def test_crops_are_the_serving_crops(prepared: Path, local_pipeline: FacePipeline) -> None:
    """Byte for byte (PNG is lossless) what the pipeline aligns for embedding."""
    for key in ("Howard_Dean_0003", "Xanana_Gusmao_0001"):
        image = pad_edges(read_image(GALLERY / f"{key}.jpg"), 50)
        (det,) = local_pipeline.detect([image])
        one = det.take([primary_face(det, image.shape[0], image.shape[1])])
        expected = local_pipeline.align(image, one)[0]
        person = key.rsplit("_", 1)[0]
        written = cv2.imread(str(prepared / person / f"{key}.png"))[:, :, ::-1]
        assert np.array_equal(written, expected)


def test_folder_layout_and_skipped_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for person in ("Ben_Affleck", "John_Kerry"):
        (src / person).mkdir(parents=True)
        for f in sorted(GALLERY.glob(f"{person}_*.jpg"))[:2]:
            shutil.copy(f, src / person / f.name)
    (src / "John_Kerry" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    blank = np.full((200, 200, 3), 128, np.uint8)
    cv2.imwrite(str(src / "Ben_Affleck" / "wall.png"), blank)
    out = tmp_path / "out"
    manifest = prepare_dataset(src, out, PipelineConfig(), PrepareOptions(processes=1), False)
    assert manifest["layout"] == "folders" and manifest["kept"] == 4
    codes = {Path(s["path"]).name: s["code"] for s in manifest["skipped_images"]}
    assert codes == {"broken.jpg": "corrupt_image", "wall.png": "no_face"}
    assert sorted(p.name for p in (out / "Ben_Affleck").iterdir()) == [
        "Ben_Affleck_0002.png",
        "Ben_Affleck_0003.png",
    ]


@pytest.mark.parametrize("case", ["empty", "no_faces", "exists", "mixed"])
def test_bad_sources_fail_with_a_code_and_write_nothing(tmp_path: Path, case: str) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    expected = {
        "empty": "empty_dataset",
        "no_faces": "no_faces",
        "exists": "output_exists",
        "mixed": "mixed_layout",
    }[case]
    if case == "no_faces":
        cv2.imwrite(str(src / "Nobody_Here_0001.png"), np.full((120, 120, 3), 200, np.uint8))
        (src / "Nobody_Here_0002.jpg").write_text("not an image")
    if case == "exists":
        shutil.copy(GALLERY / "Ben_Affleck_0002.jpg", src)
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "mixed":
        shutil.copy(GALLERY / "Ben_Affleck_0002.jpg", src)
        (src / "Someone").mkdir()
        shutil.copy(GALLERY / "John_Kerry_0001.jpg", src / "Someone")
    with pytest.raises(DatasetError) as err:
        prepare_dataset(src, out, PipelineConfig(), PrepareOptions(processes=1), False)
    assert err.value.code == expected
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_scan_reads_an_lfw_folder_from_its_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    shutil.copy(GALLERY / "Ben_Affleck_0002.jpg", tmp_path / "images")
    (tmp_path / "pairs.txt").write_text("10\t300\n")
    listing = scan_source(tmp_path)
    assert listing.layout == "flat" and listing.identities == ["Ben_Affleck"]


def test_cli_json_and_error_code(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, doc = run_cli("prepare-dataset", empty, tmp_path / "o", "--json", timeout=120)
    assert code == 1
    assert doc["error"]["code"] == "empty_dataset"
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(GALLERY.glob("Howard_Dean_*.jpg"))[:2]:
        shutil.copy(f, src)
    code, doc = run_cli(
        "prepare-dataset",
        src,
        tmp_path / "o",
        "--pad",
        "50",
        "--format",
        "jpg",
        "--json",
        ok=True,
        timeout=120,
    )
    assert doc["kept"] == 2 and doc["image_format"] == "jpg"
    assert len(list((tmp_path / "o" / "Howard_Dean").glob("*.jpg"))) == 2
