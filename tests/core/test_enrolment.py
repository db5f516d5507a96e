"""The one enrolment loop (facerec/enrolment.py): most typical photo first, each checked
against the templates accepted before it, outcomes in the order given."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facerec.enrolment import enrol_in_order
from facerec.errors import FaceRecError


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def photos(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    person = rng.standard_normal(128)
    same = [unit(person + 0.3 * rng.standard_normal(128)) for _ in range(4)]
    stranger = unit(rng.standard_normal(128))
    return same, stranger


def consistent(
    seen: list[int], embeddings: list[np.ndarray]
) -> Callable[[int, np.ndarray | None], int]:
    """Accepts a photo whose mean cosine with the templates so far is 0.4 or more."""

    def accept(i: int, templates: np.ndarray | None) -> int:
        if templates is not None and float(np.mean(templates @ embeddings[i])) < 0.4:
            raise FaceRecError("not the same person", code="inconsistent_face")
        seen.append(i)
        return i

    return accept


def test_the_stranger_is_refused_wherever_it_comes() -> None:
    same, stranger = photos(0)
    for position in range(5):
        embeddings = [*same[:position], stranger, *same[position:]]
        seen: list[int] = []
        outcomes = enrol_in_order(embeddings, consistent(seen, embeddings))
        assert len(outcomes) == 5
        refused = [i for i, o in enumerate(outcomes) if isinstance(o, FaceRecError)]
        assert refused == [position]  # in the order given, the stranger alone
        assert position not in seen and len(seen) == 4
        assert seen[0] != position  # the most typical photo went first


def test_existing_templates_count_and_nothing_is_accepted_against_them() -> None:
    same, stranger = photos(1)
    embeddings = [stranger]
    outcomes = enrol_in_order(embeddings, consistent([], embeddings), existing=same)
    assert isinstance(outcomes[0], FaceRecError)
    assert enrol_in_order([], consistent([], [])) == []


def test_an_accept_that_returns_nothing_still_gives_one_outcome_per_photo() -> None:
    same, stranger = photos(2)
    embeddings = [stranger, *same]
    kept: list[int] = []
    accept = consistent(kept, embeddings)

    def quiet(i: int, templates: np.ndarray | None) -> None:
        accept(i, templates)

    outcomes = enrol_in_order(embeddings, quiet)
    assert len(outcomes) == 5 and isinstance(outcomes[0], FaceRecError)
    assert outcomes[1:] == [None] * 4 and sorted(kept) == [1, 2, 3, 4]
