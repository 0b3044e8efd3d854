"""The hosted worker process (`python -m diffdeck.engines.hosted`) against the fake providers
(tests/fake_providers.py): one model per provider renders, its PNGs carry the hosted record, and
retries, refusals, cancels and a missing key are reported as the protocol says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.worker_protocol import decode, encode
from diffdeck.engines.hosted import client
from diffdeck.engines.hosted.main import requests
from diffdeck.engines.hosted.providers import ProviderError, provider
from diffdeck.engines.record.png_metadata import PARAMETERS_KEY, parse_parameters, read_record
from fake_providers import FakeProvider, refuse, slow, status
from helpers import readline_within
from PIL import Image

KEY = "test-key"
ENDS = ("done", "failed", "cancelled")


class Hosted:
    """A hosted worker process for `model`, its key in $HOSTED_KEY unless `key` is None."""

    def __init__(self, model: ModelSpec, tmp: Path, key: str | None = KEY):
        env = {k: v for k, v in os.environ.items() if k != "HOSTED_KEY"}
        if key is not None:
            env["HOSTED_KEY"] = key
        self.out = tmp / "images"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "diffdeck.engines.hosted", "--model", json.dumps(model.to_dict()),
             "--progress-interval", "0.2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.hello = self.read()

    def send(self, message_type: str, **fields) -> None:
        self.process.stdin.write(encode(message_type, **fields))
        self.process.stdin.flush()

    def job(self, job_id: str, spec: JobSpec) -> list[dict]:
        """Every message of the job, its end last."""
        self.send("job", id=job_id, spec=spec.to_dict(), out_dir=str(self.out))
        return self.until_end()

    def until_end(self) -> list[dict]:
        messages = [self.read()]
        while messages[-1]["type"] not in ENDS:
            messages.append(self.read())
        return messages

    def read(self) -> dict:
        line = readline_within(self.process.stdout, 30, "a message from the hosted worker")
        assert line, "the hosted worker exited"
        return decode(line)

    def close(self) -> int:
        self.send("shutdown")
        self.process.stdin.close()
        return self.process.wait(timeout=10)


@pytest.fixture
def worker(tmp_path):
    started: list[Hosted] = []

    def start(model: ModelSpec, **fields) -> Hosted:
        started.append(Hosted(model, tmp_path, **fields))
        assert started[-1].read()["type"] == "ready"
        return started[-1]

    yield start
    for hosted in started:
        hosted.process.kill()
        hosted.process.wait()


def hosted_model(kind: str, source: str, fake: FakeProvider, **fields) -> ModelSpec:
    return ModelSpec(name="h", source=source, kind=kind, api_key_env="HOSTED_KEY", base_url=fake.base_url, **fields)


def job(count: int = 1, first_seed: int = 40, **fields) -> JobSpec:
    """A resolved job (as the Dispatcher sends one)."""
    seeds = tuple(range(first_seed, first_seed + count))
    return JobSpec(**{"prompt": "a red cube", "model": "h", "steps": 1, "guidance": 1.0, "width": 1024,
                      "height": 1024, "seed": seeds[0], "seeds": seeds, "count": count, **fields})


def of(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def saved(message: dict) -> tuple[dict, Image.Image]:
    """The record and pixels of an image message's PNG, checked against the message."""
    record = read_record(message["path"])
    assert file_pixel_sha256(message["path"]) == message["pixel_sha256"] == record["pixel_sha256"]
    assert record["hosted"] == message["hosted"] and record["cost_usd"] == message["cost_usd"]
    with Image.open(message["path"]) as image:
        image.load()
        return record, image


@pytest.mark.slow
def test_ideogram_sends_each_seed_retries_a_429_when_told_and_fetches_its_url_at_once_without_the_key(worker):
    with FakeProvider("ideogram", key=KEY) as fake:
        model = hosted_model("ideogram", "V_2_TURBO", fake, options={"magic_prompt_option": "OFF"})
        hosted = worker(model)
        fake.then(status(429, retry_after=2))
        first = hosted.job("job-1", job(count=2, width=1024, height=576))
        again = hosted.job("job-2", job(count=1, first_seed=41, width=1024, height=576))

    images = of(first, "image")
    assert [m["image"] for m in images] == [0, 1] and first[-1]["type"] == "done"
    posts = [s for s in fake.seen if s.method == "POST"]
    assert [p.json["image_request"]["seed"] for p in posts] == [40, 40, 41, 41], "the 429's request again, then each"
    assert posts[1].at - posts[0].at >= 1.9, "Retry-After: 2 was honoured (a backoff waits at most 1 s)"
    assert {m["retry"] for m in of(first, "step") if "answered 429: retrying in" in m["waiting"]} == {1}, \
        "the retry's steps say so, and which retry it is"
    downloads = [s for s in fake.seen if s.method == "GET"]
    assert len(downloads) == 3 and not any("api-key" in s.headers for s in downloads)

    record, image = saved(images[1])
    assert record["seed"] == 41 and record["rng"] is None and record["spec"]["seeds"] == [40, 41]
    assert record["model"] == {"name": "h", "kind": "ideogram", "source": "V_2_TURBO", "provider": "Ideogram",
                               "base_url": fake.base_url, "version": None}
    assert record["hosted"] == {"provider": "Ideogram", "model_id": "V_2_TURBO", "version": None,
                                "seed_sent": 41, "seed_reported": 41, "reproducible": True,
                                "asked": {"width": 1024, "height": 576},
                                "sent": {"aspect_ratio": "ASPECT_16_9", "magic_prompt_option": "OFF"},
                                "returned": {"width": image.width, "height": image.height}, "request_id": None}
    assert record["cost_usd"] == 0.05 and record["price"]["source"].startswith("published prices")
    assert first[-1]["cost_usd"] == 0.1
    assert parse_parameters(image.text[PARAMETERS_KEY])["Seed"] == "41"
    assert of(again, "image")[0]["pixel_sha256"] == images[1]["pixel_sha256"], "the same seed renders it again"


@pytest.mark.slow
def test_imagen_renders_several_images_a_request_and_a_filtered_one_fails_the_job_with_its_reason(worker):
    with FakeProvider("imagen", key=KEY) as fake:
        hosted = worker(hosted_model("imagen", "imagen-4.0-fast-generate-001", fake))
        fake.then(refuse("It may contain a public figure.", images=[2]))
        messages = hosted.job("job-1", job(count=3, width=768, height=1024))

    assert len(fake.requests()) == 1 and fake.requests()[0].json["parameters"]["sampleCount"] == 3
    assert [m["image"] for m in of(messages, "image")] == [0, 1]
    assert messages[-1]["type"] == "failed" and messages[-1]["kind"] == "refused"
    assert "public figure" in messages[-1]["error"] and "imagen" in messages[-1]["error"]
    record, image = saved(of(messages, "image")[0])
    assert (image.width, image.height) == (896, 1280) and record["hosted"]["sent"] == {"aspectRatio": "3:4"}
    assert record["hosted"]["reproducible"] is False and record["hosted"]["seed_sent"] is None


@pytest.mark.slow
def test_gemini_renders_one_image_a_request_records_its_version_and_says_a_refusal(worker):
    with FakeProvider("gemini", key=KEY) as fake:
        hosted = worker(hosted_model("gemini", "gemini-2.5-flash-image", fake))
        messages = hosted.job("job-1", job(count=2))
        fake.then(refuse("IMAGE_SAFETY"))
        refused = hosted.job("job-2", job())

    assert len(fake.requests()) == 3 and messages[-1]["type"] == "done"
    record, image = saved(of(messages, "image")[1])
    assert record["model"]["version"] == "gemini-2.5-flash-image" and (image.width, image.height) == (1024, 1024)
    assert record["cost_usd"] == 0.039 and messages[-1]["cost_usd"] == 0.078
    assert refused[-1]["type"] == "failed" and refused[-1]["kind"] == "refused"
    assert "IMAGE_SAFETY" in refused[-1]["error"]


@pytest.mark.slow
def test_openai_maps_the_size_records_the_request_id_and_a_cancel_drops_the_request(worker):
    with FakeProvider("openai", key=KEY) as fake:
        hosted = worker(hosted_model("openai", "gpt-image-1", fake, options={"quality": "low"}))
        messages = hosted.job("job-1", job(width=1024, height=768))
        fake.then(slow(30))
        hosted.send("job", id="job-2", spec=job().to_dict(), out_dir=str(hosted.out))
        while (step := hosted.read())["type"] != "step":
            pass
        assert step["waiting"].startswith("waiting for openai") and step["total"] == 1
        sent = time.monotonic()
        hosted.send("cancel", id="job-2")
        cancelled = hosted.until_end()
        assert cancelled[-1] == {"type": "cancelled", "id": "job-2", "step": 0}
        assert time.monotonic() - sent < 5
        while not fake.dropped and time.monotonic() - sent < 5:
            time.sleep(0.05)
        assert [s.json["prompt"] for s in fake.dropped] == ["a red cube"], "the request was dropped"
        assert hosted.close() == 0

    record, image = saved(of(messages, "image")[0])
    assert (image.width, image.height) == (1536, 1024)
    assert record["hosted"]["sent"] == {"size": "1536x1024", "quality": "low"}
    assert record["hosted"]["request_id"].startswith("req_") and record["cost_usd"] == 0.016


@pytest.mark.slow
def test_a_missing_key_fails_the_load_naming_its_variable_and_a_refused_one_fails_the_job(worker, tmp_path):
    with FakeProvider("openai", key=KEY) as fake:
        model = hosted_model("openai", "dall-e-3", fake)
        unset = Hosted(model, tmp_path, key=None)
        assert unset.hello["device"] == "hosted" and unset.hello["environment"]["provider"] == "openai"
        assert unset.read() == {"type": "load_failed", "error": "model 'h' needs its API key in $HOSTED_KEY, "
                                                                "which is not set"}
        assert unset.process.wait(timeout=10) == 2
        messages = worker(model, key="wrong-key").job("job-1", job())

    assert messages[-1]["type"] == "failed" and messages[-1]["kind"] == "key"
    assert "$HOSTED_KEY" in messages[-1]["error"] and len(fake.requests()) == 1, "a refused key is not retried"


class Told(client.Waiting):
    """What the queue is told while each retry is waited for."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.said: list[str] = []

    def retrying(self, *args) -> None:
        super().retrying(*args)
        self.said.append(self.text())


async def test_a_timeout_or_an_unreachable_provider_is_tried_again_then_fails_with_its_kind(monkeypatch):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    waiting = Told("openai")

    async def failure(model: ModelSpec) -> ProviderError:
        http = client.Client(model, provider("openai"), waiting)
        try:
            with pytest.raises(ProviderError) as info:
                await http.send(provider("openai").request(model, job(), 0, 1, KEY))
        finally:
            await http.aclose()
        return info.value

    with FakeProvider("openai", key=KEY) as fake:
        fake.then(*[slow(5)] * client.MAX_ATTEMPTS)
        model = hosted_model("openai", "gpt-image-1", fake, timeout_s=0.3)
        timed_out = await failure(model)
        assert len(fake.requests()) == client.MAX_ATTEMPTS
    unreachable = await failure(model)  # the fake is gone: nothing listens on its port
    assert (timed_out.kind, unreachable.kind) == ("timeout", "network")
    assert re.search(r"did not answer within 0\.3 s, 4 times \(\d s in all\)", timed_out.message), timed_out.message
    assert "could not reach openai" in unreachable.message
    assert re.fullmatch(r"no answer from openai in 0\.3 s: sending again in \d s \(attempt 2 of 4; "
                        r"the provider may bill both\)", waiting.said[0]), "sent again after no answer: maybe paid twice"


def test_a_retry_waits_what_retry_after_says_else_backs_off_doubling_never_past_the_cap():
    assert client.backoff(1, "3") == 3.0 and client.backoff(1, "7200") == client.MAX_WAIT_S
    assert 9 <= client.backoff(1, formatdate(time.time() + 10, usegmt=True)) <= 10
    assert [0.5 <= client.backoff(1, None) <= 1, 1 <= client.backoff(2, None) <= 2, 2 <= client.backoff(3, None) <= 4] == [True] * 3
    assert 0.5 <= client.backoff(1, "soon") <= 1 and 0.5 <= client.backoff(1, "nan") <= 1, "an unreadable Retry-After: backoff"


def test_a_jobs_images_go_in_requests_of_consecutive_images_up_to_the_providers_limit():
    assert requests([0, 1, 2, 3, 4], 2) == [(0, 2), (2, 2), (4, 1)]
    assert requests([0, 2, 3, 5], 4) == [(0, 1), (2, 2), (5, 1)], "images already made are skipped"
