"""A hosted model end to end: the real hosted worker process against a fake provider on 127.0.0.1,
from the command line, from the workbench (read off the screen), and in an A/B set against the demo
model. The CLI's refusal of a missing key is in test_hosted_models.py (nothing renders there)."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.devices import CPU
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.png_metadata import read_record
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.images import image_widget
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.picker import Picker
from diffdeck.tui.widgets.queue_view import QueueView
from fake_providers import FakeProvider, slow
from helpers import diffdeck, screen_text, until, write_models

pytestmark = pytest.mark.slow
KEY = "test-key"


def ideogram(fake: FakeProvider) -> dict:
    return {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY", "base_url": fake.base_url,
            "price_usd": 0.05, "options": {"magic_prompt_option": "OFF"}}


def test_render_on_a_hosted_model_records_its_provider_its_cost_and_what_was_sent(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        write_models(tmp_path, {"ideo": ideogram(fake)})
        made = diffdeck("render", "a poster saying HELLO", "--model", "ideo", "--seed", "5", "--size", "1536x1024",
                        "--session", "s", "--json", cwd=tmp_path, env={"IDEOGRAM_API_KEY": KEY}, timeout=120)
        assert made.returncode == 0, made.stderr
        sent = [seen.json["image_request"] for seen in fake.requests()]
    assert sent == [{"prompt": "a poster saying HELLO", "model": "V_2_TURBO", "aspect_ratio": "ASPECT_3_2",
                     "magic_prompt_option": "OFF", "num_images": 1, "seed": 5}]
    path = tmp_path / json.loads(made.stdout)["path"]
    assert json.loads(made.stdout)["cost_usd"] == 0.05
    record = read_record(path)
    assert (record["model"]["kind"], record["model"]["source"], record["model"]["base_url"]) == \
        ("ideogram", "V_2_TURBO", fake.base_url)
    assert record["cost_usd"] == 0.05 and record["price"] == {"usd": 0.05, "source": "models.yaml"}
    hosted = record["hosted"]
    assert hosted["sent"] == {"aspect_ratio": "ASPECT_3_2", "magic_prompt_option": "OFF"}
    assert hosted["asked"] == {"width": 1536, "height": 1024} and (hosted["seed_sent"], hosted["reproducible"]) == (5, True)
    image = Session.open(tmp_path / "s", create=False).jobs["job-0001"]["images"][0]
    assert image["cost_usd"] == 0.05 and image["hosted"] == hosted and image["pixel_sha256"] == file_pixel_sha256(path)


async def test_the_workbench_renders_a_hosted_model_and_shows_what_it_waits_for(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    with FakeProvider("ideogram", key=KEY) as fake:
        fake.then(slow(3))
        registry = load_registry(write_models(tmp_path, {"ideo": ideogram(fake)}))
        config = load_config(tmp_path / "config")
        app = Workbench(LocalEngine(registry, Session.open(tmp_path / "s"), telemetry_interval_s=0.2), config,
                        [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.board.telemetry is not None, timeout=30, what="the engine started")
            app.query_one("#model", Picker).value = "ideo"
            await until(pilot, lambda: "ideo · hosted by ideogram" in screen_text(app), timeout=10,
                        what="the picker saying who renders it")
            await pilot.click("#prompt")
            await pilot.press(*"a poster saying HELLO", "ctrl+j")
            await until(pilot, lambda: "waiting for ideogram" in screen_text(app), timeout=30,
                        what="the queue showing the request out")
            waiting = next(line for line in screen_text(app).splitlines() if "waiting for ideogram" in line)
            assert "0001" in waiting and "ideo" in waiting and "0/1" not in waiting, waiting
            await until(pilot, lambda: app.board.jobs["job-0001"].status == Status.DONE, timeout=30, what="job done")
            await until(pilot, lambda: "1 image" in str(app.query_one(QueueView).get_cell("job-0001", "progress")),
                        timeout=10, what="the queue's progress cell saying 1 image")
    assert len(fake.requests()) == 1 and fake.requests()[0].json["image_request"]["prompt"] == "a poster saying HELLO"


async def test_a_hosted_models_jobs_run_at_once_on_its_lanes_in_workers_started_here(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)

    def cluster(*args, **kwargs):  # a Ray cluster's launcher, say: never for a hosted model
        raise AssertionError("a hosted model's worker was sent to the launcher")

    with FakeProvider("ideogram", key=KEY) as fake:
        fake.then(slow(10), slow(10))  # the second worker starts and sends well within it, however slow its start
        registry = load_registry(write_models(tmp_path, {"ideo": ideogram(fake)}))
        async with Dispatcher(registry, tmp_path / "images", devices=[CPU], launcher=cluster) as dispatcher:
            events = dispatcher.subscribe()
            jobs = [dispatcher.submit(JobSpec("a poster", model="ideo")) for _ in range(2)]
            for job in jobs:
                await asyncio.wait_for(dispatcher.wait(job.id), 60)
            said = [(event.type, event.job) for event in events.drain()]
            lanes = [sorted(slot.workers) for slot in dispatcher.lanes]
            assert not dispatcher.devices[0].workers and lanes == [["ideo"], ["ideo"]], "a worker a lane, none on the CPU"
    assert [job.status for job in jobs] == [Status.DONE, Status.DONE], [job.error for job in jobs]
    first_done = min(said.index((EventKind.DONE, job.id)) for job in jobs)
    assert all(said.index((EventKind.STARTED, job.id)) < first_done for job in jobs), "both requests out at once"


async def test_a_cancel_that_comes_once_the_provider_has_answered_keeps_the_paid_image_and_sends_no_more(
        tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    with FakeProvider("ideogram", key=KEY, download_s=2) as fake:
        registry = load_registry(write_models(tmp_path, {"ideo": ideogram(fake)}))
        async with Dispatcher(registry, tmp_path / "images", devices=[CPU], cancel_grace_s=0.5) as dispatcher:
            job = dispatcher.submit(JobSpec("a poster", model="ideo", count=2))
            deadline = time.monotonic() + 30
            while not any(seen.method == "GET" for seen in fake.seen):  # answered: its image is downloading
                assert time.monotonic() < deadline, "no download"
                await asyncio.sleep(0.05)
            dispatcher.cancel(job.id)
            await asyncio.wait_for(dispatcher.wait(job.id), 60)
        assert [seen.method for seen in fake.seen] == ["POST", "GET"] and not fake.dropped, "no second request"
    assert job.status == Status.CANCELLED and [image["image"] for image in job.images] == [0]
    assert read_record(job.images[0]["path"])["cost_usd"] == 0.05, "the image paid for is kept"


async def test_each_worker_gets_its_own_models_api_key_and_no_other(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    with FakeProvider("ideogram", key=KEY) as ideo, FakeProvider("openai", key="openai-key") as gpt:
        registry = load_registry(write_models(tmp_path, {"ideo": ideogram(ideo), "gpt": {
            "kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY", "base_url": gpt.base_url}}))
        async with Dispatcher(registry, tmp_path / "images", devices=[CPU]) as dispatcher:
            jobs = [dispatcher.submit(JobSpec("a red star", model=model, steps=2 if model == "demo" else None))
                    for model in ("demo", "ideo", "gpt")]
            for job in jobs:
                await asyncio.wait_for(dispatcher.wait(job.id), 60)
            keys = {worker.model: variables(worker.pid) & {"IDEOGRAM_API_KEY", "OPENAI_API_KEY"}
                    for worker in dispatcher.all_workers()}
    assert [job.status for job in jobs] == [Status.DONE] * 3, [job.error for job in jobs]
    assert keys == {"demo": set(), "ideo": {"IDEOGRAM_API_KEY"}, "gpt": {"OPENAI_API_KEY"}}


def variables(pid: int) -> set[str]:
    """The names in a running process's environment."""
    return {entry.split(b"=", 1)[0].decode() for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if entry}


def test_an_ab_set_of_the_demo_model_against_a_hosted_one_renders_both_on_one_seed(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        write_models(tmp_path, {"ideo": ideogram(fake)})
        made = diffdeck("ab", "a red circle", "--vary", "model=demo,ideo", "--size", "64x64", "--session", "s",
                        "--json", cwd=tmp_path, env={"IDEOGRAM_API_KEY": KEY}, timeout=180)
        assert made.returncode == 0, made.stderr
        seeds = [seen.json["image_request"]["seed"] for seen in fake.requests()]
    session = Session.open(tmp_path / "s", create=False)
    jobs = [session.jobs[v["job"]] for v in session.sets["set-0001"]["variants"]]
    assert [(job["spec"]["model"], job["status"]) for job in jobs] == [("demo", "done"), ("ideo", "done")]
    assert seeds == jobs[0]["spec"]["seeds"] == jobs[1]["spec"]["seeds"], "a seed drawn for both fits Ideogram's range"
    assert [image.get("cost_usd") or 0 for job in jobs for image in job["images"]] == [0, 0.05]
    assert json.loads(made.stdout.splitlines()[-1])["pairs"], "the pair is compared"


