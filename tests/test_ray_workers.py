"""Workers on a Ray cluster (engines/queue/ray_workers.py): a real local cluster started here, with
declared resources and no GPU, two actors on the CPU, each running the real worker process. Its
images land in the session as a local render's do, and replay here says so; an actor killed
mid-job is a worker crash, and what the job had made is kept."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.flows import Stage
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, RegistryError, load_registry
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.record.session import Session
from diffdeck.engines.service.recorded_queue import RecordedQueue
from helpers import diffdeck, write_models

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (CI's '.[dev]' has it)")
from diffdeck.engines.queue.ray_workers import RayWorker, RemoteProcess, actor_options, cluster_slots, slots  # noqa: E402 - needs ray
from diffdeck.engines.queue.worker_handles import WorkerError  # noqa: E402

TIMEOUT = 180
QUIET = Intervals(progress_s=1.0, preview_s=1000.0)
PROMPT = "a large red circle on a blue background"
# the demo draws, a copy of it (another model: another actor) upscales what came back to the head
TWO_MODELS = (Stage("txt2img", steps=8), Stage("upscale", model="demo2", factor=2, strength=0.5, steps=4))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024**2,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    """The demo and a copy of it: another model, so another actor."""
    root = tmp_path_factory.mktemp("ray-models")
    shutil.copytree(DEMO_FOLDER, root / "demo-copy")
    return write_models(root, {"demo2": {"source": str(root / "demo-copy"), "memory_gb": 0.1,
                                         "defaults": dict(DEMO.defaults)}})


@pytest.fixture
def two_demos(models_file):
    return load_registry(models_file)


def test_an_actor_asks_for_a_gpu_where_the_model_wants_one_else_a_cpu_and_its_memory():
    assert actor_options(ModelSpec("m", "x", device="auto"), cluster_gpus=2) == {"num_gpus": 1, "num_cpus": 1}
    assert actor_options(ModelSpec("m", "x", memory_gb=0.5), cluster_gpus=0) == {"num_cpus": 1, "memory": 500_000_000}
    assert actor_options(ModelSpec("m", "x", device="cpu"), cluster_gpus=2) == {"num_cpus": 1}
    with pytest.raises(WorkerError, match="asks for a GPU and the Ray cluster has none"):
        actor_options(ModelSpec("m", "x", device="cuda"), cluster_gpus=0)


async def run_until(queue: RecordedQueue, specs: list[JobSpec], stop=None) -> list:
    """Submit `specs`; the jobs, once each has ended (or `stop(event, dispatcher)` returned True)."""
    events = queue.dispatcher.subscribe()
    jobs = [queue.dispatcher.submit(spec) for spec in specs]

    async def follow():
        async for event in events:
            if stop and stop(event, queue.dispatcher):
                return

    waits = [asyncio.ensure_future(queue.dispatcher.wait(job.id)) for job in jobs]
    await asyncio.wait_for(asyncio.gather(follow() if stop else asyncio.sleep(0), *waits), TIMEOUT)
    return jobs


@pytest.mark.slow  # a Ray cluster of its own
async def test_a_render_through_ray_actors_lands_in_the_session_and_replays_here(cluster, models_file, two_demos,
                                                                                 tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "test")
    slots = cluster_slots()  # as `serve --ray` runs it: one device a GPU of the cluster, else a node
    assert [slot.name for slot in slots] == ["Ray cluster node 0"], "one node, no GPU: one job at a time"
    queue = RecordedQueue(two_demos, session, intervals=QUIET, launcher=RayWorker, devices=slots)
    queue.start()
    plain, flow = await run_until(queue, [JobSpec(prompt=PROMPT, model="demo", seed=1, count=2, steps=6),
                                          JobSpec(prompt=PROMPT, model="demo", seed=5, stages=TWO_MODELS)])
    workers = list(queue.dispatcher.workers.values())
    assert await queue.shut_down() is None
    session.close()

    assert (plain.status, flow.status) == (Status.DONE, Status.DONE), (plain.error, flow.error)
    assert {type(w) for w in workers} == {RayWorker} and {w.model for w in workers} == {"demo", "demo2"}
    assert {w.node for w in workers} == {socket.gethostname()}
    images = session.images_dir
    assert sorted(p.name for p in images.iterdir() if not p.name.endswith(".latents.safetensors")) == [
        "job-0001-00-1.png", "job-0001-01-2.png", "job-0002-00-5.png", "job-0002-00-5.s0-txt2img.png"]
    recorded = Session.open(tmp_path / "s").jobs
    assert [i["path"] for i in recorded["job-0001"]["images"]] == ["images/job-0001-00-1.png", "images/job-0001-01-2.png"]

    result = diffdeck("replay", "s", "--check", "--into", "out", "--models", str(models_file), cwd=tmp_path)  # local workers, no Ray
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if "image " in line]
    assert len(said) == 3 and all(": identical" in line for line in said), result.stdout


@pytest.mark.slow  # a Ray cluster of its own
async def test_an_actor_killed_mid_job_is_a_worker_crash_and_what_was_made_is_kept(cluster, two_demos, tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "test")
    queue = RecordedQueue(two_demos, session, intervals=QUIET, launcher=RayWorker)
    queue.start()
    killed = []

    def kill_after_the_first_image(event, dispatcher) -> bool:
        if event.type == EventKind.IMAGE and not killed:
            (worker,) = dispatcher.workers.values()
            killed.append(worker)
            ray.kill(worker.actor)
        return bool(killed)

    (crashed,) = await run_until(queue, [JobSpec(prompt=PROMPT, model="demo", seed=1, count=4, steps=60)],
                                 stop=kill_after_the_first_image)
    assert crashed.status == Status.FAILED and crashed.error_kind == "crash" and crashed.worker_crashes == 1
    assert "Ray actor" in crashed.error and "killed by SIGKILL" in crashed.error
    kept = [image["image"] for image in crashed.images]
    assert kept and len(kept) < 4 and all((session.images_dir / f"job-0001-{i:02d}-{i + 1}.png").is_file() for i in kept)

    (after,) = await run_until(queue, [JobSpec(prompt=PROMPT, model="demo", seed=9, steps=4)])
    assert after.status == Status.DONE, after.error
    assert await queue.shut_down() is None
    session.close()
    assert len(Session.open(tmp_path / "s").jobs["job-0001"]["images"]) == len(kept)  # recorded: resume skips them


def test_serve_ray_at_an_address_where_nothing_answers_is_one_line_at_once(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    said = diffdeck("serve", "--foreground", "--ray", f"127.0.0.1:{port}", "--session", "s", cwd=tmp_path, timeout=60)
    assert said.returncode == 2 and len(said.stderr.strip().splitlines()) == 1, said.stderr
    assert f"could not join the Ray cluster at 127.0.0.1:{port}: nothing answers" in said.stderr


def test_a_model_pinned_to_a_gpu_is_taken_where_the_cluster_has_that_many_gpus(tmp_path):
    from diffdeck.engines.queue.dispatcher import Dispatcher

    pinned = load_registry(write_models(tmp_path, {"pinned": {"source": str(DEMO_FOLDER), "gpus": [1]}}))
    on_two_gpus = Dispatcher(pinned, tmp_path, devices=slots(gpus=2, nodes=1), launcher=RayWorker)
    assert on_two_gpus.submit(JobSpec(prompt="x", model="pinned")).model == "pinned"  # queued: Ray picks the GPU
    with pytest.raises(RegistryError, match="pinned to GPU 1; this machine has no GPU"):
        Dispatcher(pinned, tmp_path, devices=slots(gpus=0, nodes=2), launcher=RayWorker).submit(
            JobSpec(prompt="x", model="pinned"))


@pytest.mark.slow  # a Ray cluster of its own
async def test_a_gpu_slot_keeps_one_model_warm_so_the_next_never_waits_for_a_held_gpu(cluster, two_demos, tmp_path):
    """Each warm model's actor holds a whole GPU: on a cluster of one GPU a second model warm beside
    the first would wait for ever for its GPU. (This cluster has none: the actors take a CPU.)"""
    session = Session.open_for_writing(tmp_path / "s", "test")
    (gpu,) = slots(gpus=1, nodes=1)
    queue = RecordedQueue(two_demos, session, intervals=QUIET, launcher=RayWorker, devices=[gpu])
    queue.start()
    events = queue.dispatcher.subscribe()
    first, second = await run_until(queue, [JobSpec(prompt=PROMPT, model="demo", seed=1, steps=2),
                                            JobSpec(prompt=PROMPT, model="demo2", seed=1, steps=2)])
    warm = [w.model for w in queue.dispatcher.all_workers()]
    assert await queue.shut_down() is None
    session.close()
    assert (first.status, second.status) == (Status.DONE, Status.DONE), (first.error, second.error)
    evicted = [e.data for e in events.drain() if e.type == EventKind.WORKER_EVICTED]
    assert warm == ["demo2"] and evicted[0]["model"] == "demo", evicted


@pytest.mark.slow  # a Ray cluster of its own
async def test_an_actor_no_node_can_place_fails_its_load_after_the_timeout(cluster):
    asks_the_impossible = {"num_cpus": 1, "resources": {"diffdeck-test-no-node-has-this": 1}}
    with pytest.raises(WorkerError, match=r"no Ray node could give model 'demo' .* within 2 s \(ray status"):
        await asyncio.wait_for(RemoteProcess.start(DEMO, QUIET, asks_the_impossible, timeout_s=2), 60)
