"""Prepare steps' inputs ahead of the steps, on one long-lived input thread.

Why ahead: a sampled or partitioned step costs sample + fetch + compute when done inline; with
the next steps' inputs prepared while this one computes it costs about max(sample + fetch,
compute). DGL's sampling kernels and pyarrow's reads release the GIL, so one thread is enough
to overlap them with torch's compute.

Why always the same thread, even with no look-ahead: DGL keeps one random engine per thread,
and the stream ``dgl.seed(s)`` starts depends on which thread calls it (DGL numbers threads in
the order they first use its engine). Steps seed DGL per (epoch, step, rank) and sample on the
one :class:`InputThread` a trainer owns — the first and only thread of the worker that uses
DGL's engine — so inline (``depth=0``) and prefetched runs, and a run resumed in a new
process, draw the same batches. (DGL's OpenMP threads break this when there are several:
workers run with ``OMP_NUM_THREADS=1``, as Ray sets it for one-CPU workers.)

Nothing in ``produce`` may be a collective: only the main thread talks to other ranks.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")

_SHARED: "InputThread | None" = None  # DGL's per-thread random engines are process state too
_SHARED_LOCK = threading.Lock()


class InputThread:
    """The one thread a trainer prepares (samples, fetches) every step's inputs on.

    Each task runs with the submitting thread's intra-op thread count: OpenMP's thread count
    is per thread, and DGL draws reproducible samples only with one OpenMP thread (see above).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sea-dist-input")
        self._threads = 0  # the OpenMP thread count last set on the input thread

    @classmethod
    def shared(cls) -> "InputThread":
        """The process's input thread, created on first use. One per process, not per trainer:
        DGL numbers threads in the order they first use its engine, so a second trainer in the
        same process (a resumed one, a test's) must sample on the same thread to draw the same
        batches."""
        global _SHARED
        with _SHARED_LOCK:
            if _SHARED is None:
                _SHARED = cls()
            return _SHARED

    def submit(self, fn: Callable[[], T]) -> "Future[T]":
        threads = torch.get_num_threads()

        def run() -> T:
            if self._threads != threads:  # only the input thread reads or writes this
                torch.set_num_threads(threads)
                self._threads = threads
            return fn()

        return self._executor.submit(run)

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the input thread, waited for (setup work that seeds or samples)."""
        return self.submit(fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Prefetcher(Generic[T]):
    """Iterate ``produce(step)`` over ``steps`` in order, computed on ``thread`` at most
    ``depth`` steps ahead of the consumer (``depth=0``: each step when it is asked for).

    An exception in ``produce`` is raised in the consumer at the step it belongs to. Use as a
    context manager: leaving it cancels what was not started and waits for what was.
    """

    def __init__(self, produce: Callable[[int], T], steps: Iterable[int], depth: int, thread: InputThread):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._produce, self._steps, self._depth, self._thread = produce, iter(steps), depth, thread
        self._pending: deque[Future] = deque()

    def _submit_next(self) -> bool:
        step = next(self._steps, None)
        if step is None:
            return False
        self._pending.append(self._thread.submit(lambda: self._produce(step)))
        return True

    def __iter__(self) -> Iterator[T]:
        while True:
            while len(self._pending) <= self._depth and self._submit_next():
                pass
            if not self._pending:
                return
            yield self._pending.popleft().result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()  # wait; its error (if any) belongs to a step nobody asked for
        self._pending.clear()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
