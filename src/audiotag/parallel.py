"""Running one function over many files in worker processes, with a progress bar.

On Linux workers are forked, as PyTorch's DataLoader does, and limited to one torch/BLAS thread
(a forked process must not start an OpenMP team, and threads of several processes fighting over
two cores made feature extraction 3-4x slower); a spawned worker spends ~1.5 s importing torch.
``AUDIOTAG_START_METHOD=spawn`` (or forkserver) overrides this. Small jobs run in-process: starting a worker
costs about a second of imports, so the pool is only started once enough tasks have appeared, and
the caller keeps producing tasks while the workers start.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from .progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")

# Below this many tasks per worker a pool costs more than it saves.
MIN_TASKS_PER_WORKER = 50
_SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def resolve_workers(num_workers: int) -> int:
    """0 means one per available CPU core."""
    if num_workers > 0:
        return num_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def start_method() -> str:
    chosen = os.environ.get("AUDIOTAG_START_METHOD")
    if chosen:
        return chosen
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _apply_chunk(fn: Callable, chunk: list) -> list:
    return [fn(task) for task in chunk]


def _worker_init(initializer: Callable | None, initargs: tuple) -> None:
    if torch.get_num_threads() != 1:  # forked from a parent held at one thread: setting it again starts a thread
        torch.set_num_threads(1)
    # numpy's OpenBLAS read its thread count when the parent imported it: a worker would still
    # split products over every core, against the other workers. Forked workers inherit one BLAS
    # thread from parallel_map; setting it again would restart OpenBLAS's thread pool after the
    # fork, a thread that spins ~40 ms of CPU for nothing.
    busy = {pool["internal_api"] for pool in threadpool_info() if pool["num_threads"] > 1}
    if busy:
        threadpool_limits({api: 1 for api in busy})
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Hold torch at one thread while workers are forked: a parent that trained with several
    (its OpenMP pool started) otherwise hands each forked worker a thread of its own."""
    import torch

    saved = torch.get_num_threads()
    if saved != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if saved != 1:
            torch.set_num_threads(saved)


def _start_pool(workers: int, initializer: Callable | None, initargs: tuple) -> ProcessPoolExecutor:
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update(_SINGLE_THREAD_ENV)  # inherited by the spawned workers only
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method()),
                                   initializer=_worker_init, initargs=(initializer, initargs))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def parallel_map(fn: Callable[[T], R], tasks: Iterable[T], *, total: int | None = None, num_workers: int = 0,
                 desc: str = "", progress: bool = True, initializer: Callable | None = None,
                 initargs: tuple = (), chunk_size: int = 8, chunked: bool = False,
                 expected: int = 0) -> Iterator[R]:
    """Yield ``fn(task)`` for every task, in completion order.

    ``tasks`` may be a lazy iterable; ``total`` (for the progress bar) is an upper bound when given.
    ``fn`` and ``initializer`` must be importable module-level functions; ``initializer`` runs once
    per worker, or once in-process when the work is too small for a pool. Tasks travel to workers
    ``chunk_size`` at a time, which keeps inter-process overhead small for millisecond tasks.
    ``chunked``: ``fn`` takes a whole chunk (a list of tasks) and returns a list of results, so it
    can batch work across tasks. ``expected``: how many tasks the caller expects; when that is
    enough for a pool, the workers are started before the first task is taken, so they start up
    while a lazy ``tasks`` does its own first work.
    """
    run_chunk = functools.partial(_apply_chunk, fn) if not chunked else fn
    tasks = iter(tasks)
    max_workers = resolve_workers(num_workers)
    enough = MIN_TASKS_PER_WORKER * 2
    early = max_workers > 1 and expected >= enough
    head = list(itertools.islice(tasks, enough)) if max_workers > 1 and not early else []
    bar = progress_bar(total=total, desc=desc, unit="file", enabled=progress)
    try:
        if not early and (max_workers <= 1 or len(head) < enough):
            if initializer is not None:
                initializer(*initargs)
            stream = itertools.chain(head, tasks)
            while chunk := list(itertools.islice(stream, chunk_size)):
                results = run_chunk(chunk)
                yield from results
                bar.update(len(results))
            return
        with threadpool_limits(1, user_api="blas"), _one_torch_thread(), \
                _start_pool(max_workers, initializer, initargs) as pool:
            pending: set[Any] = set()
            if early:
                pool.submit(int)  # a no-op: the pool forks its workers at the first submit

            def drain(block_until_below: int) -> Iterator[R]:
                nonlocal pending
                while len(pending) > block_until_below:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        results = future.result()
                        yield from results
                        bar.update(len(results))

            try:
                stream = itertools.chain(head, tasks)
                while chunk := list(itertools.islice(stream, chunk_size)):
                    pending.add(pool.submit(run_chunk, chunk))
                    if len(pending) >= max_workers * 4:
                        yield from drain(max_workers * 2)
                yield from drain(0)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()
