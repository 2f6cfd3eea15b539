"""Real processes started side by side: a test (or a module's fixture) whose processes do not depend on each other
starts them together, so the machine's cores run them at once (each ``python -m vitprune`` spends seconds on its
imports alone), and then checks each one's result as it would have checked it alone. Nothing about a process
changes: it is the same command, in the same folder, with the same environment."""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")

# processes at once: the cores, and one more to use the time a process waits on its files
WORKERS = min(4, (os.cpu_count() or 1) + 1)


def together(*calls: Callable[[], T]) -> list[T]:
    """Each of ``calls`` (say a ``subprocess.run``) in its own thread, all at once; their results in order."""
    with ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(calls)))) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result() for f in futures]


class Started:
    """Processes of a module's tests, started up front by a module-scoped fixture, ``WORKERS`` at a time; a test
    takes its own with ``result(key)`` (waiting for it)."""

    def __init__(self, calls: dict[str, Callable[[], subprocess.CompletedProcess]]):
        self._pool = ThreadPoolExecutor(max_workers=WORKERS)
        self._futures: dict[str, Future] = {k: self._pool.submit(c) for k, c in calls.items()}

    def result(self, key: str) -> subprocess.CompletedProcess:
        return self._futures[key].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def selected(request: pytest.FixtureRequest, test_name: str) -> list[dict]:
    """The parameters of each collected (selected) case of ``test_name`` in the requesting module (``[{}]`` for a
    selected test without parameters, ``[]`` when it is not selected): a fixture starts processes only for the
    cases this run will check."""
    return [getattr(getattr(item, "callspec", None), "params", {}) for item in request.session.items
            if getattr(item, "module", None) is request.module and getattr(item, "originalname", None) == test_name]
