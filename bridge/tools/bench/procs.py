"""Processes of the bench: pinning, dying with the parent, and what /proc says about them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def child_preexec(
    cpu: int | set[int] | None, *, nice: int = 0, realtime: int = 0
) -> Callable[[], None]:
    """What a child runs before exec: die with its parent, optionally pin to a CPU (or a set
    of them: a --workers supervisor's workers inherit it).

    PR_SET_PDEATHSIG covers the exits `finally` cannot (SIGKILL of the orchestrator), so no
    relay or generator outlives a bench run. The file limit is raised to the hard limit:
    N=1000 calls need a few thousand sockets in each process.

    `nice` < 0 keeps unrelated processes on the machine (someone's test run) from taking
    the relay's core; `realtime` > 0 (SCHED_FIFO) is for the RTP generator, the measuring
    instrument, whose 20 ms ticks must not wait behind anyone. Both need root or
    CAP_SYS_NICE and are skipped without it. The kernel's RT throttling (95%) still bounds
    a runaway generator.
    """

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpu} if isinstance(cpu, int) else cpu)
        if nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, nice)
        if realtime:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return preexec


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (10 ms resolution)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of `pid`: user space, and the kernel on its behalf
    (syscalls, and on loopback the receiving socket's softirq work done in the sender)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        text = fh.read()
    # The command name may contain spaces and ')'; the fields after the last ')' are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def parent_pid(stat_text: str) -> int:
    """The ppid field of a /proc/<pid>/stat line."""
    return int(stat_text[stat_text.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, theirs, ...), from a scan of /proc: a
    --workers supervisor's workers start their own sessions, so no process group has them."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                parents[int(name)] = parent_pid(fh.read())
        except (OSError, ValueError):
            continue  # gone meanwhile
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, e.g. VmRSS or VmHWM, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace`; returns the exit code (None if already reaped)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def cpu_steal_seconds(cpu: int) -> float:
    """Time the hypervisor ran something else while CPU `cpu` wanted to run (since boot)."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8]) / CLOCK_TICKS
    raise KeyError(f"/proc/stat has no cpu{cpu}")


def cpu_busy_seconds(cpu: int) -> float:
    """Everything CPU `cpu` ran (any process, interrupts) since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                return (sum(ticks[:8]) - idle) / CLOCK_TICKS
    raise KeyError(f"/proc/stat has no cpu{cpu}")


class Staller:
    """`--stall MS/EVERY`: stop the processes (SIGSTOP) for MS milliseconds, about every EVERY
    seconds (0.5x to 1.5x, seeded), then let them go on (SIGCONT). A hypervisor stealing the
    vCPU does this to a VM: the process runs no code while the kernel (here: the other core)
    keeps queueing its datagrams, and it wakes up late for everything at once. A nice-0 busy
    loop cannot do that to a process at nice -10: the scheduler preempts the loop."""

    def __init__(self, pids: list[int], stall_s: float, every_s: float, seed: int = 1) -> None:
        self._pids = pids
        self._stall_s = stall_s
        self._every_s = every_s
        self._rng = random.Random(seed)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staller", daemon=True)
        self.stalls = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.stalls

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _run(self) -> None:
        try:
            while not self._done.wait(self._every_s * self._rng.uniform(0.5, 1.5)):
                self._signal(signal.SIGSTOP)
                time.sleep(self._stall_s)
                self._signal(signal.SIGCONT)
                self.stalls += 1
        finally:
            self._signal(signal.SIGCONT)


def parse_stall(text: str) -> tuple[float, float]:
    """`100/0.5` -> (0.1 s stalled, every 0.5 s)."""
    ms, sep, every = text.partition("/")
    try:
        stall_s, every_s = float(ms) / 1000, float(every) if sep else 1.0
    except ValueError:
        raise ValueError(f"--stall wants MS/EVERY_S, e.g. 100/0.5, got {text!r}") from None
    if stall_s <= 0 or every_s <= stall_s:
        raise ValueError(f"--stall {text}: the stall must be positive and shorter than its period")
    return stall_s, every_s
