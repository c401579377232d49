"""Thread policy: CPUs from affinity and cgroup quotas; the tuner follows a machine's load."""

from __future__ import annotations

import os

import pytest

from ggufworker.engine.threads import (
    ForeignLoad,
    ThreadTuner,
    available_cpus,
    candidate_counts,
    cgroup_cpu_limit,
)


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_available_cpus_follows_affinity():
    assert available_cpus() <= len(os.sched_getaffinity(0))
    assert available_cpus() >= 1


def test_candidate_counts():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [2, 1]
    assert candidate_counts(16) == [16, 15, 8, 4, 2, 1]


def _drive(tuner: ThreadTuner, cost, steps: int, batch: int = 8) -> list[int]:
    """Run ``steps`` decode steps whose time is ``cost(threads)``; return the counts used."""
    used = []
    n = tuner.current
    for _ in range(steps):
        used.append(n)
        n = tuner.observe(cost(n), batch, True)
    return used


def test_tuner_leaves_a_quiet_machine_alone():
    tuner = ThreadTuner(2)
    quiet = {2: 0.010, 1: 0.018}.__getitem__
    used = _drive(tuner, quiet, 2000)
    assert tuner.current == 2
    # trials at 1 thread get rarer after each loss: under 2% of the steps overall
    assert used.count(1) / len(used) < 0.02


def test_tuner_drops_a_thread_when_a_core_is_taken_and_returns_after():
    tuner = ThreadTuner(2)
    quiet = {2: 0.010, 1: 0.018}.__getitem__
    busy = {2: 0.140, 1: 0.020}.__getitem__
    _drive(tuner, quiet, 300)
    assert tuner.current == 2
    used = _drive(tuner, busy, 400)
    assert tuner.current == 1
    # the switch came early: most busy steps ran on one thread
    assert used.count(1) / len(used) > 0.8
    _drive(tuner, quiet, 3000)
    assert tuner.current == 2


def test_prompt_steps_and_batch_changes_do_not_count():
    tuner = ThreadTuner(2)
    # prompt chunks are slow at every thread count: never a reason to switch
    for _ in range(500):
        tuner.observe(0.5, 8, False)
    assert tuner.current == 2
    # alternating batch sizes never give a like-for-like trial
    for i in range(500):
        n = tuner.observe(0.010 if i % 2 else 0.030, 1 + i % 2, True)
        assert n in (1, 2)
    assert tuner.current == 2


def test_a_machine_slower_for_every_count_does_not_thrash():
    """When both counts slow down alike, one trial settles it; no trial every few steps."""
    tuner = ThreadTuner(2)
    _drive(tuner, {2: 0.010, 1: 0.018}.__getitem__, 300)
    used = _drive(tuner, {2: 0.030, 1: 0.054}.__getitem__, 1000)
    assert tuner.current == 2
    assert used.count(1) / len(used) < 0.03


class _Load(ForeignLoad):
    """Other processes' CPU use set by the test, in cores."""

    def __init__(self, cores: float | None) -> None:
        self.value = cores
        self.ticks = 0

    def tick(self, now: float | None = None) -> None:
        self.ticks += 1

    def cores(self, now: float | None = None) -> float | None:
        return self.value


def test_tuner_runs_no_trial_while_nothing_else_runs():
    load = _Load(0.05)
    tuner = ThreadTuner(2, foreign=load)
    quiet = {2: 0.010, 1: 0.018}.__getitem__
    used = _drive(tuner, quiet, 2000)
    assert used.count(1) == 0 and load.ticks == 2000
    # a neighbour arrives: its steps slow down, its CPU shows, and the switch comes as before
    load.value = 1.0
    used = _drive(tuner, {2: 0.140, 1: 0.020}.__getitem__, 400)
    assert tuner.current == 1 and used.count(1) / len(used) > 0.8
    # it leaves: its CPU no longer shows, and trials at two threads still bring the count back
    load.value = 0.0
    _drive(tuner, quiet, 3000)
    assert tuner.current == 2
    # unknown load (no /proc): trials run as without the gate
    tuner = ThreadTuner(2, foreign=_Load(None))
    assert 0 < _drive(tuner, quiet, 2000).count(1) / 2000 < 0.02


def test_foreign_load_is_the_machine_less_this_process(tmp_path):
    (tmp_path / "self").mkdir()
    hz = os.sysconf("SC_CLK_TCK")

    def write(busy: int, mine: int) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice
        (tmp_path / "stat").write_text(f"cpu  {busy} 0 0 99999 7 0 0 0 0 0\ncpu0 1 2 3\n")
        fields = ["S"] + ["0"] * 10 + [str(mine), "0"] + ["0"] * 30
        (tmp_path / "self" / "stat").write_text("123 (python (x)) " + " ".join(fields))

    write(1000, 400)
    load = ForeignLoad(tmp_path, now=0.0)
    assert load.cores(now=0.0) is None  # one sample: no window yet
    write(1000 + 3 * hz // 2, 400 + hz)  # one second later: 1.5 cores busy, 1 of them ours
    load.tick(now=ForeignLoad.PERIOD / 2)  # too soon: no sample
    assert load.cores(now=1.0) == pytest.approx(0.5)
    assert ForeignLoad(tmp_path / "missing").cores() is None
