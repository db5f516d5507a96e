"""perf/threads.py: a process's CPU per thread, grouped by the thread's role."""

from __future__ import annotations

import os
import threading
import time

from perf.threads import per_request, role, thread_cpu


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(100_000))  # user time: the clock itself is a system call


def test_cpu_is_counted_for_the_thread_that_spent_it() -> None:
    before = thread_cpu(os.getpid())
    worker = threading.Thread(target=_spin, args=(0.3,), name="ThreadPoolExecutor-0_0")
    worker.start()
    worker.join(timeout=30)
    assert worker.native_id is not None
    tid = worker.native_id
    # the thread has ended: its last snapshot is the one to read, so take it live instead
    done = threading.Event()
    live = threading.Thread(target=lambda: (_spin(0.3), done.wait(30)), name="AnyIO worker thread")
    live.start()
    while live.native_id is None or sum(thread_cpu(os.getpid()).get(live.native_id, (0, 0))) < 0.25:
        time.sleep(0.05)
    after = thread_cpu(os.getpid())
    done.set()
    live.join(timeout=30)
    assert tid not in after  # an ended thread is gone from /proc
    names = {live.native_id: "AnyIO worker thread"}
    shares = per_request(before, after, names, requests=3)
    assert shares["request threads"]["cpu_ms"] >= 250 / 3
    assert shares["request threads"]["system_ms"] < shares["request threads"]["cpu_ms"]


def test_roles() -> None:
    assert role("ThreadPoolExecutor-0_1") == "pipeline"
    assert role("AnyIO worker thread") == "request threads"
    assert role("MainThread") == "event loop"
    assert role("micro-batcher") == "micro-batcher"
    assert role("heartbeat") == "other"
    assert role(None) == "native"
