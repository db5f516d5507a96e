"""The shared decode budget: concurrent reservations never exceed it; a full budget queues,
then refuses with a retriable ``busy``."""

from __future__ import annotations

import threading

import pytest

from facerec.imaging.budget import BusyError, DecodeBudget


def test_reservations_add_up_and_release() -> None:
    budget = DecodeBudget(100, wait=0.0)
    with budget.reserve(60):
        assert budget.used == 60
        with budget.reserve(40):
            assert budget.used == 100
        assert budget.used == 60
    assert budget.used == 0


def test_full_budget_refuses_with_busy_after_waiting() -> None:
    budget = DecodeBudget(100, wait=0.05)
    with budget.reserve(80), pytest.raises(BusyError) as info, budget.reserve(30):
        pass
    assert info.value.code == "busy" and info.value.http_status == 503
    assert info.value.retriable and info.value.details["retry_after"] >= 1
    assert budget.used == 0  # the refused reservation took nothing; the other one was released


def test_waiting_reservation_proceeds_when_room_is_freed() -> None:
    budget = DecodeBudget(100, wait=30.0)
    holding, release, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def holder() -> None:
        with budget.reserve(70):
            holding.set()
            release.wait(10)

    def waiter() -> None:
        with budget.reserve(50):
            seen.append(budget.used)
        done.set()

    first = threading.Thread(target=holder)
    first.start()
    holding.wait(10)
    second = threading.Thread(target=waiter)
    second.start()
    assert not done.wait(0.2)  # queued behind the holder, not over budget
    release.set()
    assert done.wait(10)
    first.join()
    second.join()
    assert seen == [50]


def test_oversized_reservation_waits_for_the_whole_budget() -> None:
    budget = DecodeBudget(100, wait=0.0)
    with budget.reserve(500):
        assert budget.used == 100
    with budget.reserve(60), pytest.raises(BusyError), budget.reserve(500):
        pass
