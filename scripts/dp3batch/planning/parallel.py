"""Planning's per-MS work spread over this machine's cores.

A rerun over 10,000 MSs stats more than a million files, and a first run opens every MS
with casacore: seconds to minutes in one process, each MS independent of the others. The
work is forked into one process per core (the children inherit everything planning has
read so far, nothing is pickled but the items' answers).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# Below this many items per process, starting processes costs more than it saves.
ITEMS_PER_PROCESS = 200
MAX_PROCESSES = 16

# In a forked child only: what it runs, handed over by `_receive_work` as it starts.
_child_work: tuple[Callable[[Any], Any], list[Sequence[Any]]] | None = None


class PlanningProcessLost(RuntimeError):
    """A process computing part of the plan ended before it answered."""


def usable_cores() -> int:
    """The cores this process may run on (a batch system's allocation, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_count(items: int, cores: int, threads: int) -> int:
    """How many processes share `items`: one unless there are enough items for several,
    and never a fork beside other threads (one of them may hold a lock the child needs)."""
    if threads > 1:
        return 1
    return max(1, min(cores, MAX_PROCESSES, items // ITEMS_PER_PROCESS))


def map_over_cores(function: Callable[[Item], Answer], items: Sequence[Item]) -> list[Answer]:
    """`[function(item) for item in items]`, computed by several processes when that pays.

    An exception of `function` is raised here, the first in the items' order (the chunks are
    contiguous and read back in order), as the plain loop would raise it."""
    processes = process_count(len(items), usable_cores(), threading.active_count())
    if processes == 1:
        return [function(item) for item in items]
    size = -(-len(items) // processes)
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    try:
        # Forked: the children receive the work as it is in memory (nothing is pickled but
        # the chunks' indices and their answers).
        context = multiprocessing.get_context("fork")
        interrupted = context.RawValue("b", 0)  # set by a child that Ctrl-C ends
        with ProcessPoolExecutor(
            len(chunks),
            mp_context=context,
            initializer=_receive_work,
            initargs=(function, chunks, interrupted),
        ) as pool:
            answers = list(pool.map(_run_chunk, range(len(chunks))))
    except BrokenProcessPool:
        if interrupted.value:
            # Ctrl-C ended a child before this process raised its own KeyboardInterrupt
            # (on a loaded machine it can see the broken pool first): it is an interrupt.
            raise KeyboardInterrupt from None
        raise PlanningProcessLost(
            "a process computing part of the plan ended before it answered (interrupted, "
            "killed, or out of memory); run again"
        ) from None
    return [answer for chunk in answers for answer in chunk]


def _receive_work(
    function: Callable[[Any], Any], chunks: list[Sequence[Any]], interrupted: Any
) -> None:
    """In each child as it starts: its work, and Ctrl-C (which reaches the whole process
    group) ends it quietly, noted in `interrupted`: the parent reports it, once."""
    global _child_work
    _child_work = (function, chunks)

    def end_quietly(signum: int, frame: Any) -> None:
        interrupted.value = 1
        os._exit(130)

    signal.signal(signal.SIGINT, end_quietly)


def _run_chunk(index: int) -> list[Any]:
    assert _child_work is not None, "started without work"
    function, chunks = _child_work
    return [function(item) for item in chunks[index]]
