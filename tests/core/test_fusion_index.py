"""What a model puts in the vector index (:class:`facerec.fusion.IndexSpace`): a single
model its embedding as it is, a fused model its first part's embedding, renormalised."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from facerec.fusion import IndexSpace, fuse_embeddings, index_space
from facerec.models import load_model_card


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), np.float32)


def test_a_single_model_indexes_its_embedding_as_it_is() -> None:
    card = load_model_card("facenet128")
    space = card.index_space
    assert space == index_space(card) == IndexSpace.identity(128)
    assert not space.projected
    e = _unit(np.random.default_rng(0), 4, 128)
    np.testing.assert_array_equal(space.project(e), e)


def test_a_fused_model_indexes_its_first_part_renormalised() -> None:
    card = load_model_card("facenet128+dlib128")
    space = card.index_space
    assert (space.embedding_size, space.size, space.projected) == (256, 128, True)
    assert space.size == card.parts[0].embedding_size
    rng = np.random.default_rng(1)
    f, d = _unit(rng, 5, 128), _unit(rng, 5, 128)
    fused = fuse_embeddings([f, d], card.part_weights)
    indexed = space.project(fused)
    assert indexed.dtype == np.float32 and indexed.shape == (5, 128)
    np.testing.assert_allclose(indexed, f, atol=1e-6)  # FaceNet's unit vector, nothing of dlib's
    np.testing.assert_allclose(np.linalg.norm(indexed, axis=1), 1.0, atol=1e-6)


def test_the_projection_refuses_embeddings_of_another_width() -> None:
    space = load_model_card("facenet128+dlib128").index_space
    with pytest.raises(InvalidArgumentError):
        space.project(np.zeros((1, 128), np.float32))
    with pytest.raises(InvalidArgumentError):
        IndexSpace(128, 256)
