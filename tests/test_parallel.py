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
