"""facerec train on the bundled faces: the loss goes down, a resumed run ends where an
uninterrupted one does, and bad input fails with a code before anything is written."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facerec.dataset.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from facerec.errors import FaceRecError  # noqa: E402
from facerec.pipeline import PipelineConfig  # noqa: E402
from tests.support.cli import run_cli  # noqa: E402
from tests.support.data import DATA  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.data import PKSampler, load_crops, scan_crops  # noqa: E402
from training.finetune import TrainConfig, run_training  # noqa: E402
from training.network import Head, freeze, split_index  # noqa: E402
from training.run import RunRequest, base_weights, engine_factory, train  # noqa: E402
from training.splits import identity_split  # noqa: E402
from training.triplet import triplet_loss  # noqa: E402

CFG = TrainConfig(p=4, k=4, epochs=2, lr=1e-4, mining="batch-hard", margin=1.0)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40 gallery faces (8 people) as training crops."""
    out = tmp_path_factory.mktemp("train") / "crops"
    prepare_dataset(DATA / "gallery", out, PipelineConfig(), PrepareOptions(pad=50), False)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def init_state() -> dict[str, torch.Tensor]:
    return base_weights("facenet128")[0]


def _request(crops: Path, out: Path, cache_dir: Path, **kw: object) -> RunRequest:
    return RunRequest(data=crops, out=out, cache_dir=cache_dir, aug_versions=2, threads=1, **kw)  # type: ignore[arg-type]


def _engine(crops: Path, cache_dir: Path, cfg: TrainConfig, init_state: dict) -> tuple:  # type: ignore[type-arg]
    cs = load_crops(scan_crops(crops))
    req = _request(crops, crops.parent / "unused", cache_dir)
    make, _ = engine_factory(cs, cfg, req, init_state, progress=False)
    return cs, make


def test_loss_goes_down(crops: Path, cache_dir: Path, init_state: dict) -> None:  # type: ignore[type-arg]
    """Batch-hard triplet loss (margin 1.0) over every training crop, before and after
    a few steps on the cached trunk: it drops."""
    cs, make = _engine(crops, cache_dir, CFG, init_state)
    split = identity_split(cs, 0.25, 0)
    ids = set(split.train)
    train_idx = np.array([i for i, lab in enumerate(cs.labels) if cs.identities[lab] in ids])

    def full_loss(state: dict) -> float:  # type: ignore[type-arg]
        from training.inception_resnet_v1 import InceptionResnetV1

        model = InceptionResnetV1()
        model.load_state_dict(state)
        engine = make(model, split_index(model, CFG.freeze_until))
        model.eval()
        with torch.no_grad():
            feats = torch.from_numpy(np.asarray(engine.store[0, train_idx], np.float32))
            emb = Head(model, split_index(model, CFG.freeze_until))(feats)
        loss, _ = triplet_loss(emb, torch.as_tensor(cs.labels[train_idx]), 1.0, "batch-hard")
        return float(loss)

    run = run_training(cs, split, replace(CFG, epochs=4), init_state, make, None, progress=False)
    before, after = full_loss(init_state), full_loss(run.last_state)
    assert before > 0.05
    assert after < 0.7 * before
    assert run.metrics["steps"] == 4 * run.metrics["steps_per_epoch"]


def test_resume_reaches_the_same_state(
    crops: Path,
    cache_dir: Path,
    init_state: dict,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    cs, make = _engine(crops, cache_dir, CFG, init_state)
    split = identity_split(cs, 0.25, 0)
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    run_training(cs, split, CFG, init_state, make, straight, progress=False)
    run_training(cs, split, CFG, init_state, make, pieces, progress=False, stop_after_epochs=1)
    assert load_checkpoint(pieces / "last.pt")["train_state"]["epoch"] == 1
    run_training(cs, split, CFG, init_state, make, pieces, progress=False, resume=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(pieces / "last.pt")
    assert a["weights_sha256"] == b["weights_sha256"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ha = json.loads((straight / "history.json").read_text())
    hb = json.loads((pieces / "history.json").read_text())
    assert ha == hb and len(ha) == 3
    assert (straight / "log.csv").read_text() == (pieces / "log.csv").read_text()
    m = json.loads((straight / "metrics.json").read_text())
    assert m["steps"] == 2 * m["steps_per_epoch"] and (straight / "curves.png").stat().st_size


def test_sampler_is_p_by_k_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), [2, 3, 4, 5, 6, 2, 2, 9, 1, 1])
    s = PKSampler(labels, p=3, k=4, seed=5)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert first == list(s)
    s.set_epoch(3)
    assert first != list(s)
    for batch in first:
        ids = labels[batch]
        assert len(batch) == 12 and len(set(ids)) == 3
        assert all((ids == i).sum() == 4 for i in set(ids)) and 8 not in ids and 9 not in ids


def _bad(kind: str, crops: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    if kind == "one_identity":
        shutil.copytree(crops / "John_Kerry", data / "John_Kerry")
    elif kind == "empty":
        data.mkdir()
    elif kind == "corrupt":
        shutil.copytree(crops, data)
        (data / "John_Kerry" / "John_Kerry_0003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif kind == "wrong_size":
        shutil.copytree(crops, data)
        cv2.imwrite(str(data / "John_Kerry" / "small.png"), np.zeros((80, 80, 3), np.uint8))
    return data


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("one_identity", "too_few_identities"),
        ("empty", "empty_dataset"),
        ("corrupt", "corrupt_image"),
        ("wrong_size", "wrong_crop_size"),
    ],
)
def test_bad_data_fails_before_writing(
    crops: Path, cache_dir: Path, tmp_path: Path, kind: str, code: str
) -> None:
    data, out = _bad(kind, crops, tmp_path), tmp_path / "run"
    with pytest.raises(FaceRecError) as err:
        train(_request(data, out, cache_dir), replace(CFG, p=2), progress=False)
    assert err.value.code == code
    assert not out.exists()


def test_other_architecture_is_refused(crops: Path, cache_dir: Path, tmp_path: Path) -> None:
    """A state dict of another network as --init, and a checkpoint that says it is one."""
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 512))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    out = tmp_path / "run"
    with pytest.raises(FaceRecError) as err:
        train(_request(crops, out, cache_dir, init=str(tmp_path / "other.pt")), CFG, False)
    assert err.value.code == "wrong_architecture" and not out.exists()
    with pytest.raises(FaceRecError) as err:
        load_checkpoint(tmp_path / "other.pt")
    assert err.value.code == "wrong_architecture"
    (tmp_path / "noise.pt").write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(FaceRecError) as err:
        load_checkpoint(tmp_path / "noise.pt")
    assert err.value.code == "not_a_checkpoint"


def test_cli_unknown_layer_and_existing_output(crops: Path, tmp_path: Path) -> None:
    cmd = ["train", "--data", crops, "--json"]
    code, doc = run_cli(*cmd, "--out", tmp_path / "r", "--freeze-until", "block9", timeout=120)
    assert code == 1
    assert doc["error"]["code"] == "invalid_argument"
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{}")
    code, doc = run_cli(*cmd, "--out", tmp_path / "r", timeout=120)
    assert doc["error"]["code"] == "output_exists"


def test_freeze_by_name() -> None:
    from training.inception_resnet_v1 import InceptionResnetV1

    model = InceptionResnetV1()
    trainable = freeze(model, "block8.4")
    assert trainable == [
        n for n, _ in model.named_parameters() if n.startswith(("block8.5.", "bottleneck"))
    ]
    assert freeze(model, None) == [n for n, _ in model.named_parameters()]
    with pytest.raises(FaceRecError):
        freeze(model, "block9")
