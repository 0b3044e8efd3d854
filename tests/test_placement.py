"""diffdeck's placement over several GPUs (diffdeck.engines.queue.placement): warm models first, best
fit of free memory, eviction per device, replicas under pressure, pins, and the lookahead per GPU."""

from __future__ import annotations

import dataclasses

from diffdeck.engines.queue.placement import Gpu, Policy, QueuedJob, WarmModel, pins, place, pressures, started

NOW = 100.0


def job(id: str, model: str, memory_gb: float = 4.0, submitted: float = NOW, **fields) -> QueuedJob:
    return QueuedJob(id, model, submitted, memory_gb, **fields)


def warm(*names: str, memory_gb: float = 4.0) -> tuple[WarmModel, ...]:
    """Models warm on a GPU, the first the least recently used."""
    return tuple(WarmModel(name, memory_gb, last_used=float(i)) for i, name in enumerate(names))


def starts(plan) -> list[tuple[str, int, bool]]:
    return [(s.job, s.gpu, s.load) for s in plan.starts]


def test_a_job_starts_where_its_model_is_warm():
    gpus = [Gpu(0, 20.0), Gpu(1, 20.0, warm("x"))]
    plan = place(gpus, [job("j1", "x")], NOW)
    assert starts(plan) == [("j1", 1, False)]


def test_a_model_loads_on_the_gpu_whose_free_memory_fits_it_best():
    gpus = [Gpu(0, 20.0), Gpu(1, 20.0, warm("y", memory_gb=11.0)), Gpu(2, 20.0, warm("z", memory_gb=14.0))]
    plan = place(gpus, [job("j1", "x", memory_gb=8.0)], NOW)
    assert starts(plan) == [("j1", 1, True)]  # 9 GB free there: the tightest fit that evicts nothing
    assert plan.starts[0].evict == ()


def test_every_idle_gpu_takes_a_job_in_one_round_and_busy_ones_none():
    gpus = [Gpu(0, 20.0), Gpu(1, 20.0, busy=True), Gpu(2, 20.0), Gpu(3, 20.0)]
    plan = place(gpus, [job(f"j{i}", m) for i, m in enumerate("abcd")], NOW)
    assert sorted(s.gpu for s in plan.starts) == [0, 2, 3]
    assert [s.job for s in plan.starts] == ["j0", "j1", "j2"]  # in queue order; j3 waits


def test_eviction_stops_the_least_recently_used_models_of_that_gpu_only():
    gpus = [Gpu(0, 12.0, warm("old", "mid", "new")), Gpu(1, 12.0, warm("x", "y"), busy=True)]
    plan = place(gpus, [job("j1", "big", memory_gb=7.0)], NOW)
    assert [(s.gpu, s.evict) for s in plan.starts] == [(0, ("old", "mid"))]  # 0 free: 8 GB freed, oldest first
    after = started(gpus[0], plan.starts[0], job("j1", "big", memory_gb=7.0), NOW)
    assert [m.name for m in after.warm] == ["new", "big"] and after.busy


def test_eviction_prefers_the_gpu_whose_evicted_models_are_coldest():
    gpus = [Gpu(0, 8.0, (WarmModel("recent", 8.0, 50.0),)), Gpu(1, 8.0, (WarmModel("stale", 8.0, 5.0),))]
    plan = place(gpus, [job("j1", "x", memory_gb=6.0)], NOW)
    assert [(s.gpu, s.evict) for s in plan.starts] == [(1, ("stale",))]


def test_a_model_too_big_for_every_idle_gpu_waits_and_lets_the_queue_go_on():
    gpus = [Gpu(0, 10.0, warm("a")), Gpu(1, 30.0, busy=True)]
    plan = place(gpus, [job("huge", "h", memory_gb=24.0), job("small", "s")], NOW)
    assert starts(plan) == [("small", 0, True)]
    assert plan.passed_over == {}


def test_a_job_waits_for_its_models_busy_gpu_until_pressure_calls_for_a_replica():
    gpus = [Gpu(0, 20.0, warm("x"), busy=True), Gpu(1, 20.0)]
    one = [job("j1", "x", submitted=NOW)]
    plan = place(gpus, one, NOW)
    assert plan.starts == () and plan.wake_at == NOW + 10.0  # pressure 10 now; 20 is reached in 10 s
    later = place(gpus, one, NOW + 10.0)
    assert [(s.job, s.gpu, s.load, s.replica) for s in later.starts] == [("j1", 1, True, True)]


def test_a_long_queue_of_one_model_gets_a_replica_at_once():
    gpus = [Gpu(0, 20.0, warm("x"), busy=True), Gpu(1, 20.0), Gpu(2, 20.0)]
    queue = [job(f"j{i}", "x") for i in range(3)]
    assert pressures(queue, NOW) == {"x": 30.0}
    plan = place(gpus, queue, NOW)
    # two replicas; the last job alone (pressure 10) waits for a GPU that holds x
    assert [(s.job, s.replica) for s in plan.starts] == [("j0", True), ("j1", True)]
    assert sorted(s.gpu for s in plan.starts) == [1, 2]


def test_while_a_job_waits_for_its_warm_gpu_others_use_the_idle_ones():
    gpus = [Gpu(0, 20.0, warm("x"), busy=True), Gpu(1, 20.0)]
    plan = place(gpus, [job("j1", "x"), job("j2", "y")], NOW)
    assert starts(plan) == [("j2", 1, True)]
    assert plan.passed_over == {}  # j1 could not have used GPU 1 yet: not passed over


def test_pins_from_a_model_entry():
    assert pins("auto", [0, 1]) == frozenset({0, 1})
    assert pins("cuda:1", None) == frozenset({1})
    assert pins("cuda", None) is None and pins("auto", None) is None


def test_a_pinned_job_runs_only_on_its_gpus():
    gpus = [Gpu(0, 20.0, warm("x")), Gpu(1, 20.0, busy=True), Gpu(2, 20.0)]
    to_one = job("j1", "x", gpus=pins("cuda:1", None))
    assert place(gpus, [to_one], NOW).starts == ()  # warm on GPU 0, but pinned to the busy GPU 1
    both = job("j2", "x", gpus=pins("auto", [1, 2]))
    assert starts(place(gpus, [both], NOW)) == [("j2", 2, True)]


def test_lookahead_a_later_job_for_the_warm_model_goes_first_on_one_gpu():
    gpus = [Gpu(0, 8.0, warm("x"))]
    plan = place(gpus, [job("head", "y", memory_gb=6.0), job("j2", "z"), job("j3", "x")], NOW)
    assert starts(plan) == [("j3", 0, False)]
    assert plan.passed_over == {"head": 1, "j2": 1}


def test_lookahead_per_gpu_the_head_takes_another_idle_gpu_rather_than_wait():
    gpus = [Gpu(0, 20.0, warm("x")), Gpu(1, 20.0, warm("z"))]
    plan = place(gpus, [job("head", "y"), job("j2", "x")], NOW)
    assert starts(plan) == [("head", 1, True), ("j2", 0, False)]  # y beside z: x's GPU left to j2
    assert plan.passed_over == {}


def test_lookahead_is_bounded_no_job_is_passed_over_more_than_lookahead_times():
    policy = Policy(lookahead=4)
    gpu = Gpu(0, 4.0, warm("x"))
    queue = [job("head", "y", submitted=0.0)] + [job(f"x{i}", "x", submitted=float(i)) for i in range(1, 10)]
    order = []
    for round_ in range(6):
        plan = place([gpu], queue, NOW + round_, policy)
        (start,) = plan.starts
        order.append(start.job)
        queue = [dataclasses.replace(j, passed_over=plan.passed_over.get(j.id, j.passed_over))
                 for j in queue if j.id != start.job]
        gpu = dataclasses.replace(started(gpu, start, job(start.job, "y" if start.job == "head" else "x"),
                                          NOW + round_), busy=False)
    assert order == ["x1", "x2", "x3", "x4", "head", "x5"]
    assert [m.name for m in gpu.warm] == ["x"]  # y evicted x to load, then x evicted y


def test_lookahead_zero_keeps_queue_order():
    gpus = [Gpu(0, 8.0, warm("x"))]
    plan = place(gpus, [job("head", "y", memory_gb=6.0), job("j2", "x")], NOW, Policy(lookahead=0))
    assert [(s.job, s.evict) for s in plan.starts] == [("head", ("x",))]


def test_a_gpu_that_keeps_one_model_warm_evicts_it_for_another_whatever_its_budget():
    gpus = [Gpu(0, 80.0, warm("old", "new", memory_gb=1.0), one_model=True)]
    plan = place(gpus, [job("j1", "x", memory_gb=1.0)], NOW)
    assert [(s.gpu, s.evict) for s in plan.starts] == [(0, ("old", "new"))]
