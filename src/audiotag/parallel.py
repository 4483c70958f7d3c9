"""Running one function over many files in worker processes, with a progress bar.

Workers are started with ``spawn`` (never ``fork``: a forked torch process can deadlock in its
thread pool) and each uses one torch/BLAS thread, since threads of several processes fighting
over two cores made feature extraction 3-4x slower. Small jobs run in-process: starting a worker
costs about a second of imports.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from tqdm.auto import tqdm

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


def _worker_init(initializer: Callable | None, initargs: tuple) -> None:
    import torch

    torch.set_num_threads(1)
    if initializer is not None:
        initializer(*initargs)


def parallel_map(fn: Callable[[T], R], tasks: Iterable[T], *, total: int | None = None, num_workers: int = 0,
                 desc: str = "", progress: bool = True, initializer: Callable | None = None,
                 initargs: tuple = ()) -> Iterator[R]:
    """Yield ``fn(task)`` for every task, in completion order.

    ``fn`` and ``initializer`` must be importable module-level functions. ``initializer`` also
    runs once in-process when the work is too small for a pool.
    """
    tasks = list(tasks)
    total = len(tasks) if total is None else total
    workers = min(resolve_workers(num_workers), max(1, len(tasks) // MIN_TASKS_PER_WORKER))
    bar = tqdm(total=total, desc=desc, unit="file", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    try:
        if workers <= 1:
            if initializer is not None:
                initializer(*initargs)
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
        os.environ.update(_SINGLE_THREAD_ENV)  # inherited by the spawned workers only
        try:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(initializer, initargs))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with pool:
            pending: set[Any] = set()
            queue = iter(tasks)
            try:
                for task in queue:
                    pending.add(pool.submit(fn, task))
                    if len(pending) >= workers * 8:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            yield future.result()
                            bar.update()
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
                        bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()
