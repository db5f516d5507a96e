"""The fused model facenet128+dlib128: names, identity, packed crops, the fused cosine on
real faces, its card's threshold, and its refusal on Triton (needs the graphs `facerec
models` builds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from facerec.fusion import (
    FusedEmbedder,
    FusionSpec,
    PartNormalisation,
    fuse_embeddings,
    fused_sha256,
    pack_crops,
    split_embeddings,
    unpack_crops,
)
from facerec.models import (
    check_model_name,
    embedder_key,
    list_models,
    load_model_card,
    model_path,
    write_calibrated_card,
)
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.quality import sharpness
from tests.support.data import DIFFERENT_PAIRS, FUSED, GALLERY, SAME_PAIRS, lfw_image


@pytest.fixture(scope="module")
def parts() -> list[FacePipeline]:
    return [FacePipeline.local(PipelineConfig(model=m)) for m in ("facenet128", "dlib128")]


def embed_all(pipeline: FacePipeline, keys: list[str], folder: Path | None = None) -> np.ndarray:
    images = [lfw_image(k) if folder is None else lfw_image_at(folder, k) for k in keys]
    results = pipeline.analyze(images, primary_only=True)
    out = [r.faces[0].embedding for r in results]
    assert all(e is not None for e in out)
    return np.stack(out)  # type: ignore[arg-type]


def lfw_image_at(folder: Path, key: str) -> np.ndarray:
    from facerec.imaging.decode import read_image
    from facerec.imaging.pad import pad_edges

    return pad_edges(read_image(folder / f"{key}.jpg"), 50)


@pytest.mark.parametrize(
    "name", ["facenet128+dlib128", "dlib128+facenet128", "a+b", "my-model.2+x_1"]
)
def test_fused_names_are_valid(name: str) -> None:
    assert check_model_name(name) == name
    with pytest.raises(InvalidArgumentError) as err:
        check_model_name(name, allow_fused=False)
    assert err.value.code == "invalid_model_name"


@pytest.mark.parametrize(
    "name", ["a+a", "a+b+c", "+a", "a+", "+", "A+b", "mtcnn+x", "x+mtcnn-pnet", "a +b", "a/b+c"]
)
def test_invalid_fused_names(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        check_model_name(name)
    assert err.value.code == "invalid_model_name"


def test_fused_model_has_no_graphs_of_its_own(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        model_path(embedder_key(FUSED, "int8"))
    assert err.value.code == "fused_model_has_no_graphs"
    with pytest.raises(InvalidArgumentError) as err:
        write_calibrated_card(load_model_card(FUSED), "x+y", {}, "a dataset", tmp_path)
    assert err.value.code == "invalid_model_name"
    assert {"dlib128", FUSED} <= set(list_models())


def test_identity_differs_from_either_part_and_follows_the_weights() -> None:
    card = load_model_card(FUSED)
    ids = {card.identity, *(p.identity for p in card.parts)}
    assert len(ids) == 3 and card.identity.startswith(f"{FUSED}:")
    assert [p.name for p in card.parts] == ["facenet128", "dlib128"]
    assert sum(card.part_weights) == pytest.approx(1.0)
    other = fused_sha256(card.parts, (card.part_weights[0] + 0.01, card.part_weights[1] - 0.01))
    assert other != card.weights_sha256


def test_weights_make_the_cosine_affine_in_the_normalised_score() -> None:
    spec = FusionSpec(
        ("a", "b"), (PartNormalisation(0.04, 0.14), PartNormalisation(0.83, 0.04)), 0.4
    )
    a, b = spec.part_weights()
    assert a + b == pytest.approx(1.0) and a / b == pytest.approx((0.4 / 0.14) / (0.6 / 0.04))
    rng = np.random.default_rng(0)
    cf, cd = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    z = 0.4 * (cf - 0.04) / 0.14 + 0.6 * (cd - 0.83) / 0.04
    np.testing.assert_allclose(spec.normalised(a * cf + b * cd), z, atol=1e-9)


def test_packed_crops_round_trip_and_sharpness_reads_the_first_part() -> None:
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)
    second = rng.integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    packed = pack_crops([first, second])
    assert packed.shape == (3, 160, 310, 3) and not packed[:, 150:, 160:].any()
    a, b = unpack_crops(packed, [160, 150])
    assert (a == first).all() and (b == second).all()
    assert sharpness(packed[0]) == sharpness(first[0])
    with pytest.raises(InvalidArgumentError):
        unpack_crops(first, [160, 150])


def test_fused_cosine_is_the_weighted_sum_of_the_parts(
    fused: FacePipeline, parts: list[FacePipeline]
) -> None:
    keys = [k for pair in SAME_PAIRS + DIFFERENT_PAIRS for k in pair]
    x = embed_all(fused, keys)
    f, d = (embed_all(p, keys) for p in parts)
    a, b = fused.card.part_weights
    assert x.shape == (len(keys), 256)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # each part as that model alone embeds it (own template, size, graph, flip)
    np.testing.assert_allclose(x[:, :128] / np.sqrt(a), f, atol=1e-5)
    np.testing.assert_allclose(x[:, 128:] / np.sqrt(b), d, atol=1e-5)
    np.testing.assert_allclose(x @ x.T, a * (f @ f.T) + b * (d @ d.T), atol=2e-5)
    back = split_embeddings(x, [128, 128], (a, b))
    np.testing.assert_allclose(fuse_embeddings(back, (a, b)), x, atol=1e-6)


def test_align_then_embed_carries_the_packed_crops(fused: FacePipeline) -> None:
    """The callers that align first and embed later (enrolment, video, the gateway)."""
    image = lfw_image("Ann_Veneman_0003")
    (det,) = fused.detect([image])
    crops = fused.align(image, det)
    assert crops.shape == (len(det), 160, 310, 3) and crops.dtype == np.uint8
    assert fused.card.crop_shape == (160, 310)
    (result,) = fused.analyze([image])
    expected = np.stack([f.embedding for f in result.faces if f.embedding is not None])
    np.testing.assert_allclose(fused.embed(crops), expected, atol=1e-6)
    assert isinstance(fused.embedder, FusedEmbedder) and fused.in_process


@pytest.mark.parametrize(("a", "b"), SAME_PAIRS)
def test_same_person_pairs_verify(fused: FacePipeline, a: str, b: str) -> None:
    x = embed_all(fused, [a, b])
    assert float(x[0] @ x[1]) >= fused.threshold


@pytest.mark.parametrize(("a", "b"), DIFFERENT_PAIRS)
def test_different_person_pairs_do_not(fused: FacePipeline, a: str, b: str) -> None:
    x = embed_all(fused, [a, b])
    assert float(x[0] @ x[1]) < fused.threshold


def test_gallery_people_score_above_strangers(fused: FacePipeline) -> None:
    keys = sorted(p.stem for p in GALLERY.glob("*.jpg"))
    x = embed_all(fused, keys, GALLERY)
    person = np.array([k.rsplit("_", 1)[0] for k in keys])
    sims = x @ x.T
    same = (person[:, None] == person[None, :]) & ~np.eye(len(keys), dtype=bool)
    different = person[:, None] != person[None, :]
    assert sims[same].min() > sims[different].max()
    assert sims[different].max() < fused.threshold
