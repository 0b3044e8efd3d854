"""A hosted provider misbehaving, met by the real hosted worker process (`python -m
diffdeck.engines.hosted`) and, where it is cheap, by the Dispatcher and the CLI: rate limits and
server errors retried as long as the provider asks and no sooner, slow answers timed out, a cancel
that drops the request, an image URL gone before it is fetched, refusals, keys and quotas told
apart, a key never sent where the provider did not ask for it, and whatever a provider says
reaching the error line one short, inert line. The providers are tests/fake_providers.py on
127.0.0.1; what each answers is what its provider documents."""

from __future__ import annotations

import asyncio
import math
import time
from email.utils import formatdate

import pytest
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.queue.devices import CPU
from diffdeck.engines.queue.dispatcher import Dispatcher
from fake_providers import FakeProvider, quota, refuse, slow, status, trickle
from helpers import diffdeck, write_models
from test_engine import until
from test_hosted_worker import KEY, Hosted, hosted_model, job, of, worker  # noqa: F401 (worker: a fixture)

pytestmark = pytest.mark.slow

WALL = time.time() - time.monotonic()  # a Seen's `at` (monotonic) as wall-clock time: at + WALL
HOSTILE = "\x1b[2J\x1b]0;owned\x07[bold red]PWNED[/bold red] [link=file:///etc/passwd]click[/link]\r\n" + "A" * 10_000


@pytest.fixture
def hosted(request):
    """Starts a hosted worker for a model of `kind` served by `fake` (test_hosted_worker's `worker`)."""
    start_worker = request.getfixturevalue("worker")

    def start(kind: str, source: str, fake: FakeProvider, key: str | None = KEY, **fields) -> Hosted:
        return start_worker(hosted_model(kind, source, fake, **fields), key=key)
    return start


def failure(messages: list[dict]) -> dict:
    assert messages[-1]["type"] == "failed", messages[-1]
    assert not of(messages, "image"), "nothing was saved for a failed request"
    return messages[-1]


def test_a_429_is_sent_again_no_sooner_than_its_retry_after_date_says(hosted):
    with FakeProvider("openai", key=KEY) as fake:
        worker = hosted("openai", "gpt-image-1", fake)
        when = math.ceil(time.time()) + 3  # a whole second: an HTTP date says no finer
        fake.then(status(429, retry_after=formatdate(when, usegmt=True)))
        messages = worker.job("job-1", job())
    first, second = fake.requests()
    assert messages[-1]["type"] == "done"
    assert second.at + WALL >= when - 0.01, f"retried {when - second.at - WALL:.2f} s before the Retry-After date"
    assert second.at - first.at < 3.5 + 1, "and not much later either"


def test_a_google_429_is_sent_again_no_sooner_than_the_retry_delay_in_its_body_says(hosted):
    """Google asks for its wait in the error body (RetryInfo), with no Retry-After header."""
    limited = {"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                         "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                                         {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                                     {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}}
    with FakeProvider("gemini", key=KEY) as fake:
        worker = hosted("gemini", "gemini-2.5-flash-image", fake)
        fake.then(status(429, body=limited))
        messages = worker.job("job-1", job())
    first, second = fake.requests()
    assert messages[-1]["type"] == "done", messages[-1]
    assert 3 - 0.05 <= second.at - first.at < 3 + 1, "the retryDelay was waited (a backoff waits at most 1 s)"
    assert any("retrying in 3 s" in m["waiting"] for m in of(messages, "step"))


# What the providers answer a rate limit with (not a spent quota): Google's words for it, and OpenAI's
# to a new account, whose code says rate_limit_exceeded while its words point at billing
OPENAI_RATE_LIMITED = ("Rate limit reached for gpt-image-1 in organization org-x on images per minute: Limit 5, "
                       "Used 5, Requested 1. Please try again in 1s. Please add a payment method to your account to "
                       "increase your rate limit. Visit https://platform.openai.com/account/billing to add a payment "
                       "method.")


@pytest.mark.parametrize("kind, source, limited", [
    ("gemini", "gemini-2.5-flash-image", status(429, retry_after=1)),
    ("openai", "gpt-image-1", status(429, retry_after=1, message=OPENAI_RATE_LIMITED)),
])
def test_a_rate_limit_that_mentions_quota_or_billing_is_waited_out_not_taken_for_a_spent_quota(
        hosted, kind, source, limited):
    with FakeProvider(kind, key=KEY) as fake:
        worker = hosted(kind, source, fake)
        fake.then(limited)
        messages = worker.job("job-1", job())
    assert messages[-1]["type"] == "done", messages[-1]
    assert len(fake.requests()) == 2, "the rate-limited request was sent again"


def test_server_errors_are_retried_with_the_wait_shown_then_the_answer_is_taken(hosted):
    with FakeProvider("imagen", key=KEY) as fake:
        worker = hosted("imagen", "imagen-4.0-fast-generate-001", fake)
        fake.then(status(503), status(500))
        messages = worker.job("job-1", job(count=2))
    assert len(fake.requests()) == 3 and messages[-1]["type"] == "done"
    assert [m["image"] for m in of(messages, "image")] == [0, 1]
    waits = [m["waiting"] for m in of(messages, "step")]
    assert any(w.startswith("imagen answered 503: retrying in") and w.endswith("(attempt 2 of 4)") for w in waits)


def test_a_slow_answer_is_dropped_at_timeout_s_and_sent_again_and_four_slow_ones_fail_the_job_as_a_timeout(hosted):
    with FakeProvider("openai", key=KEY) as fake:
        worker = hosted("openai", "gpt-image-1", fake, timeout_s=0.5)
        fake.then(slow(10))
        recovered = worker.job("job-1", job())
        assert recovered[-1]["type"] == "done" and len(fake.requests()) == 2 and len(fake.dropped) == 1
        fake.then(*[slow(10)] * 5)
        started = time.monotonic()
        messages = worker.job("job-2", job())
        took = time.monotonic() - started
    ended = failure(messages)
    assert ended["kind"] == "timeout" and "0.5 s" in ended["error"] and "openai" in ended["error"]
    assert len(fake.requests()) == 2 + 4, "four attempts in all, no more"
    assert len(fake.dropped) == 1 + 4, "each timed-out request's connection was closed"
    assert took < 4 * 0.5 + 7 + 2, "0.5 s each and the backoff between (at most 1 + 2 + 4 s)"


def test_an_answer_trickling_in_past_timeout_s_is_dropped_and_sent_again(hosted):
    """timeout_s bounds a whole request: bytes that keep coming, each soon, do not stretch it."""
    with FakeProvider("openai", key=KEY) as fake:
        worker = hosted("openai", "gpt-image-1", fake, timeout_s=0.5)
        fake.then(trickle(10))
        started = time.monotonic()
        messages = worker.job("job-1", job())
        took = time.monotonic() - started
    assert messages[-1]["type"] == "done" and len(fake.requests()) == 2 and len(fake.dropped) == 1
    assert took < 0.5 + 1 + 3, "0.5 s, a backoff of at most 1 s, then the answer"


def test_a_cancel_during_the_wait_before_a_retry_ends_the_job_at_once_and_sends_nothing_more(hosted):
    with FakeProvider("ideogram", key=KEY) as fake:
        worker = hosted("ideogram", "V_2_TURBO", fake)
        fake.then(status(503, retry_after=30))
        worker.send("job", id="job-1", spec=job().to_dict(), out_dir=str(worker.out))
        deadline = time.monotonic() + 30
        while "retrying in" not in (message := worker.read()).get("waiting", ""):
            assert message["type"] == "step", message
            assert time.monotonic() < deadline, "no wait before a retry"
        sent = time.monotonic()
        worker.send("cancel", id="job-1")
        assert worker.until_end()[-1] == {"type": "cancelled", "id": "job-1", "step": 0}
        assert time.monotonic() - sent < 2
        time.sleep(0.5)
        assert len(fake.requests()) == 1
        assert worker.close() == 0


async def test_a_hosted_job_cancelled_in_the_dispatcher_ends_at_once_and_drops_its_request(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    with FakeProvider("ideogram", key=KEY) as fake:
        registry = load_registry(write_models(tmp_path, {"ideo": {
            "kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY", "base_url": fake.base_url,
            "concurrency": 1}}))
        fake.then(slow(60))
        async with Dispatcher(registry, tmp_path / "images", devices=[CPU],
                              intervals=Intervals(progress_s=0.2, preview_s=1000)) as dispatcher:
            events = dispatcher.subscribe()
            submitted = dispatcher.submit(JobSpec("a poster saying HELLO", model="ideo"))
            await until(events, lambda e: e.job == submitted.id and e.type == EventKind.STEP)
            deadline = time.monotonic() + 30
            while not fake.requests():
                assert time.monotonic() < deadline, "no request to the provider"
                await asyncio.sleep(0.05)
            assert submitted.record().progress["waiting"].startswith("waiting for ideogram")
            sent = time.monotonic()
            dispatcher.cancel(submitted.id)
            await until(events, lambda e: e.job == submitted.id and e.type == EventKind.CANCELLED, timeout=5)
            assert time.monotonic() - sent < 2
            assert submitted.status == Status.CANCELLED
            while not fake.dropped and time.monotonic() - sent < 3:
                await asyncio.sleep(0.05)
            assert fake.dropped == fake.requests(), "the request in flight was dropped"


def test_an_image_url_expired_before_its_download_fails_the_job_naming_it_without_sending_the_key(hosted):
    with FakeProvider("ideogram", key=KEY, url_lifetime_s=0) as fake:
        worker = hosted("ideogram", "V_2_TURBO", fake)
        started = time.monotonic()
        ended = failure(worker.job("job-1", job()))
    assert "expired" in ended["error"] and "410" in ended["error"] and time.monotonic() - started < 5
    downloads = [seen for seen in fake.seen if seen.method == "GET"]
    assert downloads and not any("api-key" in seen.headers for seen in downloads)
    assert len(fake.requests()) == 1, "the images were paid for once, not generated again"
    assert not list(worker.out.glob("*.png"))


@pytest.mark.parametrize("kind, source, refusal, reason", [
    ("ideogram", "V_2_TURBO", refuse("Prompt failed the safety check"), "Prompt failed the safety check"),
    ("openai", "dall-e-3", refuse("Your request was rejected as a result of our safety system."), "safety system"),
    ("imagen", "imagen-4.0-generate-001", refuse("Unable to show generated images. Support codes: 39322892"),
     "39322892"),
    ("gemini", "gemini-2.5-flash-image", refuse("PROHIBITED_CONTENT", prompt=True), "PROHIBITED_CONTENT"),
])
def test_a_safety_refusal_fails_the_job_once_with_the_providers_reason(hosted, kind, source, refusal, reason):
    with FakeProvider(kind, key=KEY) as fake:
        worker = hosted(kind, source, fake)
        fake.then(refusal)
        ended = failure(worker.job("job-1", job()))
    assert ended["kind"] == "refused" and reason in ended["error"] and kind in ended["error"]
    assert len(fake.requests()) == 1, "a refusal is not sent again"


@pytest.mark.parametrize("kind, source", [("openai", "gpt-image-1"), ("imagen", "imagen-4.0-generate-001"),
                                          ("gemini", "gemini-2.5-flash-image"), ("ideogram", "V_2A")])
def test_a_spent_quota_fails_the_job_as_quota_without_retrying(hosted, kind, source):
    with FakeProvider(kind, key=KEY) as fake:
        worker = hosted(kind, source, fake)
        fake.then(quota())
        ended = failure(worker.job("job-1", job()))
    assert ended["kind"] == "quota" and kind in ended["error"]
    assert len(fake.requests()) == 1


def test_googles_refusal_of_a_key_is_a_key_error_and_an_empty_key_variable_fails_the_load(hosted, tmp_path):
    with FakeProvider("imagen", key=KEY) as fake:
        ended = failure(hosted("imagen", "imagen-4.0-generate-001", fake, key="AIza-not-the-key").job("job-1", job()))
        empty = Hosted(hosted_model("gemini", "gemini-2.5-flash-image", fake), tmp_path, key="  ")
        assert empty.read() == {"type": "load_failed",
                                "error": "model 'h' needs its API key in $HOSTED_KEY, which is empty"}
        assert empty.process.wait(timeout=10) == 2
    assert ended["kind"] == "key" and "$HOSTED_KEY" in ended["error"] and "AIza-not-the-key" not in ended["error"]
    assert len(fake.requests()) == 1, "Google answers a wrong key 400 API_KEY_INVALID: not sent again"


def test_the_key_is_not_carried_along_a_redirect_to_another_host(hosted):
    with FakeProvider("ideogram", key=KEY) as elsewhere, FakeProvider("ideogram", key=KEY) as fake:
        worker = hosted("ideogram", "V_2_TURBO", fake)
        fake.then(status(307, body="", headers={"Location": f"{elsewhere.base_url}/generate"}))
        worker.job("job-1", job())
    assert not [seen for seen in elsewhere.seen if seen.headers.get("api-key") == KEY], \
        "the Api-Key went to a host the model's base_url does not name"


def test_a_hostile_provider_message_reaches_the_clis_error_line_inert_and_short(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        fake.then(status(400, message=HOSTILE))
        write_models(tmp_path, {"ideo": {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY",
                                         "base_url": fake.base_url}})
        made = diffdeck("render", "a poster", "--model", "ideo", "--session", "s", cwd=tmp_path,
                        env={"IDEOGRAM_API_KEY": KEY}, timeout=120)
    assert made.returncode == 1
    [line] = [line for line in made.stderr.splitlines() if line.startswith("diffdeck: error:")]
    assert "ideogram" in line and "400" in line and "PWNED" in line
    assert line.isprintable() and "\x1b" not in line and len(line) < 500
    assert "AAAA" * 100 not in made.stderr and "\x1b" not in made.stdout + made.stderr
