"""Sharing the CPU (tinyldm/threads.py): the thread count follows the other processes' use of the cores."""

import pytest
import torch

from tinyldm import threads


@pytest.mark.parametrize("others, cores, current, expected", [
    (0.0, 2, 2, 2),    # a free machine: all cores
    (0.6, 2, 2, 2),    # a little load elsewhere: not enough to give up a core
    (1.0, 2, 2, 1),    # another job holds a core: one thread
    (2.0, 2, 2, 1),    # … both cores: still at least one
    (1.0, 2, 1, 1),    # two jobs at one thread each: steady
    (0.4, 2, 1, 1),    # hysteresis: the core is not back yet
    (0.1, 2, 1, 2),    # the other job ended: both cores again
    (3.0, 8, 8, 5),
])
def test_threads_for(others, cores, current, expected):
    assert threads.threads_for(others, cores, current) == expected


def test_share_cores_drops_and_restores_threads(monkeypatch):
    before = torch.get_num_threads()
    clock = {"wall": 100.0, "busy": 1000.0, "own": 10.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads, "cpu_seconds", lambda: (clock["busy"], clock["own"]))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        torch.set_num_threads(2)
        threads.start()
        clock.update(wall=101.0, busy=1001.8, own=10.9)  # 1 s: others used 0.9 of a core
        threads.share_cores()
        assert torch.get_num_threads() == 2  # not yet CHECK_EVERY seconds: no look
        clock.update(wall=104.0, busy=1007.6, own=13.8)  # 4 s: 7.6 busy − 3.8 ours = 0.95 of a core elsewhere
        threads.share_cores()
        assert torch.get_num_threads() == 1
        clock.update(wall=108.0, busy=1011.8, own=17.8)  # 4 s: 4.2 − 4.0 = 0.05 of a core elsewhere
        threads.share_cores()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_user_setting_omp_num_threads_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads.start()
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "cpu_seconds", lambda: pytest.fail("looked at the machine"))
    threads.share_cores()
    assert torch.get_num_threads() == before


def test_cpu_seconds_reads_proc_on_linux():
    seconds = threads.cpu_seconds()
    if seconds is None:
        pytest.skip("no /proc here")
    busy, own = seconds
    assert busy >= own >= 0
