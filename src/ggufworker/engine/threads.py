"""CPU thread policy: how many threads llama.cpp gets, from the CPUs really available, and a
tuner that follows a busy machine.

llama.cpp's CPU backend synchronises its threads at every operation of a graph, waiting by
spinning. When another process takes a core, one of our threads is descheduled while the others
spin at the next barrier, and a step costs many times more: on a 2-core machine with one core
busy, 2 threads ran at ~7% of their quiet speed while 1 thread kept ~50%. So:

- :func:`available_cpus` counts what this process may use: its CPU affinity, capped by a cgroup
  CPU quota (containers limited to 2 CPUs on a 64-core host see 64 cores in ``os.cpu_count``).
- :class:`ThreadTuner` compares, from time to time, a few decode steps at another thread count
  with the steps just before at the current one (same batch size only) and keeps the faster; when
  the other count loses, it waits twice as long before the next trial, so a quiet machine pays
  almost nothing for the watching. A sudden slowdown (steps twice as long as this count's usual
  time at that batch size) starts a trial at once. ``llama_set_n_threads`` may change between
  decodes.
- At the most threads, a trial is skipped while other processes use under
  :data:`ThreadTuner.QUIET_CORES` of CPU (:class:`ForeignLoad`, from ``/proc``): then fewer
  threads can only lose (below the most, trials go on: they are the way back), and each lost trial
  cost a fresh server a few slow steps in its first minutes (4 steps at one thread every 32 to
  256 steps: ~4% of a 64-token stream on the 2-core VM).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from pathlib import Path

logger = logging.getLogger(__name__)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by this process's cgroup quota (v2 ``cpu.max`` or v1 CFS), None if none."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process can run on: affinity mask, capped by a cgroup quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def candidate_counts(n_max: int) -> list[int]:
    """Thread counts the tuner may try: ``n_max`` and its halvings down to 1, plus n_max - 1."""
    counts = {n_max, max(1, n_max - 1)}
    n = n_max
    while n > 1:
        n //= 2
        counts.add(max(1, n))
    return sorted(counts, reverse=True)


class ForeignLoad:
    """CPU time that other processes took lately, in cores, from Linux's ``/proc`` (the whole
    machine's busy time, ``/proc/stat``, less this process's, ``/proc/self/stat``). Inside a
    container ``/proc/stat`` is the host's, so neighbours there count too.

    :meth:`tick` takes a sample at most every :data:`PERIOD` seconds (cheap to call every
    step); :meth:`cores` averages over the last second or so.
    """

    PERIOD = 0.25

    def __init__(self, proc: Path = Path("/proc"), now: float | None = None) -> None:
        self._stat, self._own = proc / "stat", proc / "self" / "stat"
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._samples: deque[tuple[float, float]] = deque(maxlen=8)  # (time, foreign seconds)
        self.tick(now)

    def _read(self) -> float | None:
        try:
            cpu = self._stat.read_text().split("\n", 1)[0].split()
            # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
            v = [int(x) for x in cpu[1:9]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            own = self._own.read_text()
            f = own[own.rindex(")") + 2 :].split()
            mine = int(f[11]) + int(f[12])  # utime + stime of all threads
        except (OSError, ValueError, IndexError):
            return None
        return (busy - mine) / self._hz

    def tick(self, now: float | None = None) -> None:
        """Take a sample if the last one is :data:`PERIOD` old."""
        now = time.monotonic() if now is None else now
        if self._samples and now - self._samples[-1][0] < self.PERIOD:
            return
        value = self._read()
        if value is not None:
            self._samples.append((now, value))

    def cores(self, now: float | None = None) -> float | None:
        """Cores other processes used, on average since the newest sample at least half a
        second older than the latest; None without two such samples (or without ``/proc``)."""
        self.tick(now)
        if not self._samples:
            return None
        t1, v1 = self._samples[-1]
        older = [(t, v) for t, v in self._samples if t1 - t >= 0.5]
        if not older:
            return None
        t0, v0 = older[-1]
        return max(0.0, (v1 - v0) / (t1 - t0))


class ThreadTuner:
    """Pick the thread count with the shortest decode steps, re-checking now and then.

    Feed every decode step to :meth:`observe`; it returns the thread count the next step should
    use. Only steps without prompt chunks (pure decoding) are compared, and only against steps of
    the same batch size.
    """

    #: steps per trial, and the gap between trials (doubled after each lost trial, up to the max)
    TRIAL_STEPS = 4
    FIRST_GAP = 32
    MAX_GAP = 2048
    #: an alternative must be this much faster to win
    MARGIN = 0.9
    #: steps this much slower than usual (several in a row) start a trial at once
    SLOWDOWN = 2.0
    #: below this much CPU taken by other processes (cores), no trial at the most threads
    QUIET_CORES = 0.25

    def __init__(self, n_max: int, foreign: ForeignLoad | None = None) -> None:
        """Args:
        n_max: the most threads to use (the CPUs available).
        foreign: what other processes take (sampled each step); without it, or where it
            cannot tell, every trial runs.
        """
        self.foreign = foreign
        self.counts = candidate_counts(max(1, n_max))
        self.current = self.counts[0]
        self._gap = self.FIRST_GAP
        self._since = 0
        self._recent: list[tuple[int, float]] = []  # (batch size, seconds) at the current count
        self._trial: int | None = None
        self._trial_times: list[float] = []
        self._trial_batch = 0
        self._next_alt = 0
        self._usual: dict[int, float] = {}  # batch size -> usual step time at the current count
        self._slow = 0

    def _quiet(self) -> bool:
        load = self.foreign.cores() if self.foreign is not None else None
        return load is not None and load < self.QUIET_CORES

    @property
    def in_use(self) -> int:
        """The thread count last returned by :meth:`observe` (a trial's, during one)."""
        return self.current if self._trial is None else self._trial

    def _alternative(self) -> int:
        others = [c for c in self.counts if c != self.current]
        alt = others[self._next_alt % len(others)]
        self._next_alt += 1
        return alt

    def observe(self, seconds: float, n_seqs: int, decode_only: bool) -> int:
        """Record one step; return the thread count for the next step."""
        if len(self.counts) == 1:
            return self.current
        if not decode_only:
            if self._trial is not None:  # a prompt chunk spoils the comparison: abandon it
                self._trial = None
            return self.current
        if self._trial is not None:
            if n_seqs != self._trial_batch:
                self._trial = None
                return self.current
            self._trial_times.append(seconds)
            if len(self._trial_times) < self.TRIAL_STEPS:
                return self._trial
            base = [t for b, t in self._recent if b == n_seqs][-self.TRIAL_STEPS :]
            trial = sorted(self._trial_times)[len(self._trial_times) // 2]
            ref = sorted(base)[len(base) // 2]
            alt, self._trial = self._trial, None
            self._recent.clear()
            # after any trial, the usual times are learnt again (a slower machine is the new
            # normal when the other count did not win either)
            self._usual.clear()
            if trial < ref * self.MARGIN:
                logger.info(
                    "threads: %d -> %d (decode step %.1f ms -> %.1f ms)",
                    self.current, alt, ref * 1e3, trial * 1e3,
                )  # fmt: skip
                self.current = alt
                self._gap = self.FIRST_GAP
            else:
                self._gap = min(self._gap * 2, self.MAX_GAP)
            self._since = 0
            return self.current
        if self.foreign is not None:
            self.foreign.tick()
        self._recent.append((n_seqs, seconds))
        del self._recent[: -4 * self.TRIAL_STEPS]
        self._since += 1
        usual = self._usual.get(n_seqs)
        if usual is not None and seconds > usual * self.SLOWDOWN:
            self._slow += 1
            if self._slow >= self.TRIAL_STEPS:
                self._slow = 0
                self._gap = self.FIRST_GAP
                self._since = self._gap
        else:
            self._slow = 0
            # a slow-moving usual time; steps far above it don't move it (that is the signal)
            self._usual[n_seqs] = seconds if usual is None else 0.9 * usual + 0.1 * seconds
        same = sum(1 for b, _ in self._recent if b == n_seqs)
        if self._since >= self._gap and same >= self.TRIAL_STEPS:
            # nothing else runs: at the most threads, a trial of fewer could only lose (look
            # again after the same gap); below it, trials are the way back up
            if self.current == self.counts[0] and self._quiet():
                self._since = 0
                return self.current
            self._trial = self._alternative()
            self._trial_times = []
            self._trial_batch = n_seqs
            return self._trial
        return self.current
