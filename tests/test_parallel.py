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
