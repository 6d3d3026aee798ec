"""Sharing the CPU: torch's thread count follows what other processes use of the cores.

PyTorch runs each op on all cores (one thread a core) and waits for the slowest thread. When another process holds a
core, every op of ours waits for it: two trainings started together on 2 cores were measured at 0.15× of their solo
speed each, and a training beside a burst of short torch processes at 1/30. With one thread each they share the
cores instead.

So the scripts look at the machine every CHECK_EVERY seconds (`share_cores`, called once a training step and once a
sampling batch): the other processes' CPU use over the last interval, from Linux's /proc/stat minus this process's
own time in /proc/self/stat, leaves `cores − others` cores for us, at least 1 (threads_for). A change is said in one
line. Hysteresis (drop at ≥ DROP_AT of a core taken, return at ≤ RETURN_AT) keeps a steady machine at a steady count.

A user who sets OMP_NUM_THREADS (or torch.set_num_threads before `start`) chooses for themselves: nothing changes
then. Off Linux (no /proc) nothing changes either. Results of a run do not depend on the thread count in theory, but
float sums may round differently with another count: an exact resume needs the same count, which a steady machine
keeps.
"""

import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

CHECK_EVERY = 2.0  # seconds between two looks at the machine
DROP_AT = 0.75  # others using this much of a core (or more) take it from us
RETURN_AT = 0.25  # … and give it back when they use no more than this

_state = {"active": False, "cores": 1, "last": None}  # last: (wall time, all cores' busy s, our busy s)


def cpu_seconds() -> tuple[float, float] | None:
    """(busy seconds of all cores since boot, busy seconds of this process) from /proc; None where there is none."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()  # "cpu user nice system idle iowait irq …"
        busy = sum(int(v) for k, v in enumerate(cpu[1:9]) if k not in (3, 4))  # all but idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # fields 3 … after "pid (name)"
        return busy / ticks, (int(own[11]) + int(own[12])) / ticks  # utime + stime (fields 14, 15)
    except (OSError, ValueError, IndexError):
        return None


def threads_for(others: float, cores: int, current: int) -> int:
    """Threads to use when other processes use `others` cores: the free cores, at least 1, with hysteresis."""
    free = cores - others
    if free <= current - DROP_AT:  # others took (most of) a core we use
        return max(1, int(free + 1 - DROP_AT))
    if current < cores and free >= current + 1 - RETURN_AT:  # a core came back
        return min(cores, int(free + RETURN_AT))
    return current


def start() -> None:
    """Take the first look (the scripts call this at start-up, through tinyldm.runs.run_cli)."""
    user_chose = "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    now = cpu_seconds()
    _state.update(active=not user_chose and now is not None and cores > 1, cores=cores,
                  last=(time.monotonic(), *now) if now else None)


def share_cores() -> None:
    """Every CHECK_EVERY seconds: measure the others' use since the last look and set torch's threads to match."""
    if not _state["active"]:
        return
    wall = time.monotonic()
    last_wall, last_busy, last_own = _state["last"]
    if wall - last_wall < CHECK_EVERY:
        return
    now = cpu_seconds()
    if now is None:
        return
    busy, own = now
    others = max(0.0, (busy - last_busy) - (own - last_own)) / (wall - last_wall)  # cores used by other processes
    _state["last"] = (wall, busy, own)
    current = torch.get_num_threads()
    chosen = threads_for(others, _state["cores"], current)
    if chosen != current:
        torch.set_num_threads(chosen)
        tqdm.write(f"threads: {current} → {chosen}: other processes use {others:.1f} of the {_state['cores']} cores "
                   "(set OMP_NUM_THREADS to choose yourself)", file=sys.stderr)
