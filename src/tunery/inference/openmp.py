"""Keep torch's OpenMP threads spinning for the scheduler: run other torch work in threads that end.

GNU OpenMP (``libgomp``, which torch ships) keeps a pool of worker threads for every thread that ever ran a
parallel region, until that thread exits. Once it manages more threads than there are CPUs, it stops spinning
between regions (a "throttled" spin count) and every parallel region waits for its workers to be woken. A
SmolLM2 decode step runs ~150 parallel regions: 17.8 ms a step at batch 1 against 12.4 ms on this 2-vCPU
machine when another, idle thread of the process had run a parallel torch op earlier (and 12.8 ms when that
thread had exited). So the engine does its own torch work (the precision probe, loading a model) in a thread
that ends when the work is done, and the scheduler's thread is the only long-lived one with a pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_passing_thread(work: Callable[[], T], name: str = "tunery-torch-work") -> T:
    """``work()``, run in a new thread that exits when it returns (its OpenMP pool with it); re-raises its error."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
