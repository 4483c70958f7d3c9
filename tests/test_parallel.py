import math
import os

import pytest

from audiotag.parallel import parallel_map


def pid_and_square(x):
    return os.getpid(), x * x


def test_pool_and_in_process_give_the_same_results():
    many = sorted(r for _, r in parallel_map(pid_and_square, range(300), num_workers=2, progress=False))
    assert many == [x * x for x in range(300)]
    pids = {p for p, _ in parallel_map(pid_and_square, range(300), num_workers=2, progress=False)}
    assert os.getpid() not in pids and len(pids) >= 1
    few = {p for p, _ in parallel_map(pid_and_square, range(10), num_workers=2, progress=False)}
    assert few == {os.getpid()}  # too little work for a pool


def fail_on_seven(x):
    if x == 7:
        raise ValueError("seven")
    return math.sqrt(x)


def test_worker_errors_reach_the_caller():
    with pytest.raises(ValueError, match="seven"):
        list(parallel_map(fail_on_seven, range(200), num_workers=2, progress=False))


def thread_counts(_):
    import torch
    from threadpoolctl import threadpool_info

    return os.getpid(), torch.get_num_threads(), max(p["num_threads"] for p in threadpool_info())


def test_each_worker_computes_on_one_thread():
    """Two workers on two cores: a worker that also splits its products over threads (torch's,
    or numpy's OpenBLAS, which read the core count before the fork) fights the other one."""
    import numpy  # noqa: F401  (loads OpenBLAS in the parent, as the feature cache does)

    results = list(parallel_map(thread_counts, range(200), num_workers=2, progress=False))
    assert {pid for pid, _, _ in results} - {os.getpid()}
    assert {(torch_threads, blas_threads) for _, torch_threads, blas_threads in results} == {(1, 1)}


def os_threads_after_a_product(_):
    import numpy as np

    a = np.ones((400, 400), dtype=np.float32)
    a @ a  # large enough for OpenBLAS to use its thread pool if it had more than one thread
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or os.environ.get("AUDIOTAG_START_METHOD", "fork") != "fork",
                    reason="counts a forked worker's threads through Linux's /proc")
def test_forked_workers_start_no_blas_thread_pool_and_the_parent_gets_its_threads_back():
    """Setting OpenBLAS's thread count in a forked worker restarts its pool: a thread that spins
    ~40 ms per worker (1.7% of a cache build). Workers are forked with one BLAS thread instead."""
    import numpy as np
    from threadpoolctl import threadpool_info

    np.ones((300, 300)) @ np.ones((300, 300))
    before = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    counts = set(parallel_map(os_threads_after_a_product, range(200), num_workers=2, progress=False))
    assert counts == {1}
    assert {p["internal_api"]: p["num_threads"] for p in threadpool_info()} == before


def test_with_enough_tasks_expected_the_workers_start_before_the_first_task_is_made():
    """So they start up while a lazy task stream does its own first work (the feature cache lists
    and checks the files meanwhile)."""
    import multiprocessing

    def tasks(seen):
        seen.append(len(multiprocessing.active_children()))
        yield from range(300)

    for expected, started in ((0, 0), (300, 2)):
        seen = []
        results = sorted(r for _, r in parallel_map(pid_and_square, tasks(seen), num_workers=2, progress=False,
                                                    expected=expected))
        assert results == [x * x for x in range(300)]
        assert seen == [started]
    assert list(parallel_map(pid_and_square, iter([]), num_workers=2, progress=False, expected=300)) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or os.environ.get("AUDIOTAG_START_METHOD", "fork") != "fork",
                    reason="counts a forked worker's threads through Linux's /proc")
def test_workers_forked_after_multithreaded_torch_work_start_with_one_thread():
    """A pipeline trains a stage in-process (torch on every core), then builds the next stage's
    features in forked workers: each worker must not inherit a thread of torch's pool."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        counts = set(parallel_map(os_threads_after_a_product, range(200), num_workers=2, progress=False))
        assert counts == {1}
        assert torch.get_num_threads() == 2  # the parent gets its threads back
    finally:
        torch.set_num_threads(saved)
