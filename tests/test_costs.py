"""Costs and budgets of hosted models: `budgets:` in models.yaml, the estimate of a job at the size
its provider is sent, budgets kept by a real RecordedQueue before anything is sent (a refusal
starts no worker), the day's spend ledger with a torn last line, a route's money cap, and what the
CLI and the workbench show. The spend that accumulates is rendered by the real hosted worker
against a fake provider on 127.0.0.1."""

import contextlib
from pathlib import Path

import pytest
from diffdeck.engines.core.budgets import BudgetError, Budgets
from diffdeck.engines.core.events import Event, EventKind, Status
from diffdeck.engines.core.flow_checks import route_job
from diffdeck.engines.core.registry import RegistryError, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.hosted.estimate import job_estimate
from diffdeck.engines.hosted.prices import PRICES_READ
from diffdeck.engines.queue.devices import CPU
from diffdeck.engines.record.session import Session
from diffdeck.engines.record.spend import (
    DayTally,
    Spend,
    Spent,
    day_spent,
    ledger_path,
    record_spend,
    session_spent,
    today,
)
from diffdeck.engines.service.costs import Costs
from diffdeck.engines.service.recorded_queue import RecordedQueue
from diffdeck.engines.sets.variants import plan_ab
from diffdeck.tui.workbench_state import Board
from fake_providers import FakeProvider, ok, status
from helpers import diffdeck, one_line_error, until, write_models
from PIL import Image

KEY = "test-key"
ENV = {"IDEOGRAM_API_KEY": KEY}
IDEO = {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY"}  # $0.05 an image, published
PUBLISHED = f"published prices read {PRICES_READ}"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)


def models_file(folder: Path, budgets=None, routes=None, **models) -> Path:
    return write_models(folder, models or {"ideo": IDEO}, budgets, routes or None)


def record_hosted_job(folder: Path, job_id: str, costs: tuple[float | None, ...], model: str = "ideo") -> None:
    """A finished job of a hosted model in the session at `folder`, as the queue records one."""
    session = Session.open_for_writing(folder, "a test")
    session.append(queued(job_id, len(costs), model))
    for i, cost in enumerate(costs):
        session.append(image_event(session, job_id, i, cost))
    session.append({"type": "done", "job": job_id, "timings": {"denoise_s": 1.0}, "peak_memory": 0})
    session.close()


def queued(job_id: str, count: int, model: str = "ideo") -> dict:
    return {"type": "queued", "job": job_id, "spec": JobSpec("a sign", model=model, count=count).to_dict(), "position": 0}


def image_event(session: Session, job_id: str, image: int, cost: float | None) -> dict:
    """A hosted image as the worker reports it, its file written."""
    path = session.images_dir / f"{job_id}-{image}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 40 * image, 30)).save(path)
    return {"type": "image", "job": job_id, "image": image, "seed": image, "path": str(path), "pixel_sha256": "0" * 64,
            "timings": {"denoise_s": 1.0}, "peak_memory": 0, "cost_usd": cost}


@contextlib.asynccontextmanager
async def queue_on(folder: Path, models: Path):
    """A recorded queue on the session at `folder`, not started: nothing renders."""
    queue = RecordedQueue(load_registry(models), Session.open_for_writing(folder, "a test"), devices=[CPU])
    try:
        yield queue
    finally:
        await queue.shut_down()
        queue.session.close()


async def refusal(submit) -> str:
    with pytest.raises(BudgetError) as e:
        await submit
    return str(e.value)


# budgets: in models.yaml

def test_budgets_are_read_from_models_yaml(tmp_path):
    registry = load_registry(models_file(tmp_path, {"job_usd": 0.5, "day_usd": 20}))
    assert registry.budgets == Budgets(job_usd=0.5, session_usd=None, day_usd=20.0) and registry.budgets.any
    assert not load_registry(models_file(tmp_path)).budgets.any


@pytest.mark.parametrize("budgets, says", [
    ({"job_usd": -1}, "budgets.job_usd: must be a number of US dollars, 0 or more, got -1"),
    ({"day_usd": "ten"}, "budgets.day_usd: must be a number of US dollars, 0 or more, got 'ten'"),
    ({"session_usd": True}, "budgets.session_usd: must be a number"),
    ({"session_usd": 10**400}, "budgets.session_usd: must be a number"),  # past a float: no OverflowError
    ({"jobs_usd": 1}, "budgets.jobs_usd: is not a budget; budgets are job_usd, session_usd, day_usd"),
    (5, "'budgets:'"),
])
def test_a_bad_budget_is_refused_naming_its_key(tmp_path, budgets, says):
    path = models_file(tmp_path, budgets)
    with pytest.raises(RegistryError, match="^" + str(path)) as e:
        load_registry(path)
    assert says in str(e.value)


def test_the_cli_refuses_a_bad_budget_in_one_line(tmp_path):
    models_file(tmp_path, {"session_usd": -2})
    one_line_error(diffdeck("models", cwd=tmp_path), "budgets.session_usd", "-2")


# the estimate

def test_a_job_is_priced_at_the_size_its_provider_is_sent(tmp_path):
    registry = load_registry(models_file(
        tmp_path, ideo=IDEO, own={**IDEO, "price_usd": 0.07},
        gpt={"kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY", "options": {"quality": "low"}},
        new={"kind": "imagen", "source": "imagen-3.0-generate-002", "api_key_env": "GEMINI_API_KEY"},
        auto={"kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY"}))

    def text(**spec) -> str:
        return job_estimate(JobSpec("a sign", **spec), registry).text()

    assert text(model="ideo", count=2) == f"about $0.10 (2 x $0.05, ideo at {PUBLISHED})"
    assert text(model="own") == "about $0.07 (1 x $0.07, own at its price_usd in models.yaml)"
    # gpt-image-1 costs more for a size that is not square: 1100x1000 is sent as 1024x1024
    assert text(model="gpt", width=1100, height=1000) == f"about $0.011 (1 x $0.011, gpt at {PUBLISHED})"
    assert text(model="gpt", width=1500, height=1000) == f"about $0.016 (1 x $0.016, gpt at {PUBLISHED})"
    # quality auto (the API's default) is billed as what the API picks: priced at the most, and said so
    assert text(model="auto") == f"about $0.167 (1 x $0.167, auto at {PUBLISHED} (quality auto, priced as high: at most))"
    unknown = job_estimate(JobSpec("a sign", model="new"), registry)
    assert unknown.usd is None and "price_usd:" in unknown.text()
    local = job_estimate(JobSpec("a sign", model="demo", count=4), registry)
    assert (local.usd, local.hosted, local.text()) == (0.0, False, "about $0.00 (demo free)")


# budgets kept at submit, by a real RecordedQueue

async def test_a_job_over_the_job_budget_is_refused_before_anything_is_queued(tmp_path):
    async with queue_on(tmp_path / "s", models_file(tmp_path, {"job_usd": 0.10})) as queue:
        said = await refusal(queue.submit(JobSpec("a sign", model="ideo", count=3)))
        assert said == f"job-0001 would cost about $0.15 (3 x $0.05, ideo at {PUBLISHED}): over the job budget of $0.10"
        assert queue.dispatcher.jobs == {}
        assert (await queue.submit(JobSpec("a sign", model="ideo", count=2))).id == "job-0001", "no number used"
        assert (await queue.submit(JobSpec("a red circle", count=8))).status == Status.QUEUED, "local jobs are free"


async def test_the_session_budget_counts_what_is_recorded_and_what_is_queued(tmp_path):
    record_hosted_job(tmp_path / "s", "job-0001", (0.05,))
    assert Session.open(tmp_path / "s").jobs["job-0001"]["images"][0]["cost_usd"] == 0.05, "the session keeps it"
    async with queue_on(tmp_path / "s", models_file(tmp_path, {"session_usd": 0.20})) as queue:
        await queue.submit(JobSpec("a sign", model="ideo", count=2))
        said = await refusal(queue.submit(JobSpec("a sign", model="ideo", count=2)))
        assert said == (f"job-0003 would cost about $0.10 (2 x $0.05, ideo at {PUBLISHED}): with $0.05 spent and $0.10 "
                        "queued in this session, over the session budget of $0.20")
        assert (await queue.submit(JobSpec("a sign", model="ideo"))).id == "job-0003", "up to the budget is kept"


async def test_a_retry_is_kept_to_the_budgets_as_a_new_job_is(tmp_path):
    async with queue_on(tmp_path / "s", models_file(tmp_path, {"session_usd": 0.10})) as queue:
        first = await queue.submit(JobSpec("a sign", model="ideo", count=2))
        assert await queue.cancel(first.id)
        await queue.submit(JobSpec("a sign", model="ideo", count=2))
        said = await refusal(queue.retry(first.id))
        assert said.startswith("job-0001 would cost about $0.10") and "$0.10 queued in this session" in said
        assert queue.dispatcher.jobs[first.id].status == Status.CANCELLED


async def test_every_image_paid_for_counts_once_in_the_session_spend(tmp_path):
    """Image 0 made, the job failed; retried, image 0 made (and paid for) again: both count, in the
    session and on the board, and a compaction cut short does not count them twice."""
    folder = tmp_path / "s"
    session = Session.open_for_writing(folder, "a test")
    for _attempt in range(2):
        session.append(queued("job-0001", 2))
        session.append(image_event(session, "job-0001", 0, 0.05))
        session.append({"type": "failed", "job": "job-0001", "error": "ideogram answered 400", "kind": "unsupported"})
    journal = (folder / "journal.jsonl").read_bytes()
    session.compact()
    (folder / "journal.jsonl").write_bytes(journal)  # killed between writing the snapshot and emptying the journal
    session.close()
    reopened = Session.open(folder)
    board = Board()
    board.load(reopened)
    assert session_spent(reopened.jobs.values()) == board.spent() == Spent(0.10, 2, 0)
    async with queue_on(folder, models_file(tmp_path, {"session_usd": 0.12})) as queue:
        said = await refusal(queue.submit(JobSpec("a sign", model="ideo")))
    assert "with $0.10 spent and $0.00 queued in this session" in said


async def test_jobs_resumed_from_a_session_are_kept_to_the_budgets_together(tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "a test")
    for job_id in ("job-0001", "job-0002"):  # queued when diffdeck stopped: 2 images at $0.05 each to make
        session.append(queued(job_id, 2))
    session.close()
    async with queue_on(tmp_path / "s", models_file(tmp_path, {"session_usd": 0.15})) as queue:
        queue.dispatcher.pause()  # nothing is sent: what is kept is what the budgets let through
        queue.start()
        jobs = queue.dispatcher.jobs
        assert (jobs["job-0001"].status, jobs["job-0002"].status) == (Status.QUEUED, Status.FAILED)
        assert jobs["job-0002"].error == (f"job-0002 would cost about $0.10 (2 x $0.05, ideo at {PUBLISHED}): with "
                                          "$0.00 spent and $0.10 queued in this session, over the session budget of $0.15")
    assert Session.open(tmp_path / "s").jobs["job-0002"]["status"] == Status.FAILED


@pytest.mark.slow
async def test_a_hosted_jobs_retry_asks_only_for_the_images_it_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProvider("openai", key=KEY) as fake:
        fake.then(ok(), status(400))  # image 0 made (and paid for), image 1 refused: the job fails
        dalle = {"kind": "openai", "source": "dall-e-3", "api_key_env": "OPENAI_API_KEY", "base_url": fake.base_url,
                 "price_usd": 0.05}  # one image a request
        queue = RecordedQueue(load_registry(models_file(tmp_path, {"session_usd": 0.10}, dalle=dalle)),
                              Session.open_for_writing(tmp_path / "s", "a test"), devices=[CPU])
        queue.start(resume=False)
        try:
            job = await queue.submit(JobSpec("a red kite", model="dalle", count=2))
            failed = await queue.dispatcher.wait(job.id)
            assert failed.status == Status.FAILED and [image["image"] for image in failed.images] == [0]
            await queue.retry(job.id)  # $0.05 spent, one image to make: within the budget
            done = await queue.dispatcher.wait(job.id)
            said = await refusal(queue.submit(JobSpec("a red kite", model="dalle")))
        finally:
            await queue.shut_down()
            queue.session.close()
        asked = len(fake.requests())
    assert done.status == Status.DONE and sorted(image["image"] for image in done.images) == [0, 1]
    assert asked == 3, "the retry asked for image 1 only"
    assert "with $0.10 spent" in said
    assert session_spent(queue.session.jobs.values()) == Spent(0.10, 2, 0)
    entries = [Spend.from_line(line) for line in ledger_path().read_bytes().splitlines()]
    assert [(entry.image, entry.usd) for entry in entries] == [(0, 0.05), (1, 0.05)]


async def test_the_day_budget_counts_every_session_of_the_user_from_the_ledger(tmp_path):
    root = tmp_path / "sessions"
    ledger = ledger_path()  # the test's own XDG_STATE_HOME (conftest)
    record_spend(ledger, Spend(today(), "another", "job-0004", 0, "ideo", 0.30))
    record_spend(ledger, Spend("2000-01-01", "another", "job-0001", 0, "ideo", 5.0))  # another day
    with open(ledger, "ab") as f:
        f.write(b'{"date": "' + today().encode() + b'", "session": "another", "job": "job-0005", "im')  # torn by a kill
    async with queue_on(root / "s", models_file(tmp_path, {"day_usd": 0.40})) as queue:
        await queue.submit(JobSpec("a sign", model="ideo", count=2))
        said = await refusal(queue.submit(JobSpec("a sign", model="ideo")))
        assert said == (f"job-0002 would cost about $0.05 (1 x $0.05, ideo at {PUBLISHED}): with $0.30 spent today "
                        f"({ledger}) and $0.10 queued here, over the day's budget of $0.40")


async def test_a_set_is_refused_as_a_whole_and_a_job_of_it_by_the_job_budget(tmp_path):
    ab = plan_ab([JobSpec("a sign", model="demo", count=2), JobSpec("a sign", model="ideo", count=2)])
    async with queue_on(tmp_path / "s", models_file(tmp_path, {"session_usd": 0.08})) as queue:
        said = await refusal(queue.submit_set(ab))
        assert said == (f"the set's 2 jobs (job-0001 to job-0002) would cost about $0.10 (demo free; 2 x $0.05, ideo "
                        f"at {PUBLISHED}): with $0.00 spent and $0.00 queued in this session, over the session budget "
                        "of $0.08")
        assert queue.dispatcher.jobs == {}
    async with queue_on(tmp_path / "t", models_file(tmp_path, {"job_usd": 0.08})) as queue:
        said = await refusal(queue.submit_set(ab))
        assert said.startswith("job-0002 would cost about $0.10") and said.endswith("over the job budget of $0.08")


async def test_budgets_refuse_a_model_whose_price_is_not_known(tmp_path):
    models = models_file(tmp_path, {"day_usd": 5},
                         new={"kind": "imagen", "source": "imagen-3.0-generate-002", "api_key_env": "IDEOGRAM_API_KEY"})
    async with queue_on(tmp_path / "s", models) as queue:
        said = await refusal(queue.submit(JobSpec("a sign", model="new")))
        assert said.startswith("job-0001: the price of new is not known") and "price_usd:" in said


def test_a_routes_money_cap_without_prices_takes_the_preview_route(tmp_path):
    registry = load_registry(models_file(tmp_path, routes={"final": {"model": "ideo", "max_cost_usd": 0.08}}))
    routed = route_job(JobSpec("a sign", route="final"), registry)  # no price given: the cost is not known
    assert routed.route == "preview" and "its cost is not known and the cost cap is $0.08" in routed.routed_by


async def test_a_route_over_its_money_cap_takes_the_preview_route(tmp_path):
    models = models_file(tmp_path, routes={"final": {"model": "ideo", "max_cost_usd": 0.08}})
    async with queue_on(tmp_path / "s", models) as queue:
        kept = await queue.submit(JobSpec("a sign", route="final"))
        assert kept.spec["model"] == "ideo" and "estimate $0.05, cap $0.08" in kept.spec["routed_by"]
        capped = await queue.submit(JobSpec("a sign", route="final", count=2))
        assert (capped.spec["route"], capped.spec["flow"]) == ("preview", "demo-preview")
        assert "its estimate of $0.10 is over the cost cap of $0.08: route preview" in capped.spec["routed_by"]


# the ledger

def test_the_ledger_skips_a_line_whose_usd_is_not_a_number_of_dollars(tmp_path):
    ledger = tmp_path / "spend.jsonl"
    record_spend(ledger, Spend(today(), "s", "job-0001", 0, "ideo", 0.05))
    with open(ledger, "ab") as f:
        for usd in ("NaN", "-1", "true", "1e999", "1" + "0" * 400):  # hand-edited, or another program's
            f.write(b'{"date":"%s","session":"s","job":"job-0002","image":0,"model":"ideo","usd":%s}\n'
                    % (today().encode(), usd.encode()))
    assert day_spent(ledger) == 0.05


def test_entries_the_ledger_could_not_take_are_written_with_the_next(tmp_path):
    record_hosted_job(tmp_path / "s", "job-0001", (0.05, 0.05))
    costs = Costs(load_registry(models_file(tmp_path)), Session.open(tmp_path / "s"))
    costs.ledger.parent.parent.mkdir(parents=True, exist_ok=True)
    costs.ledger.parent.write_text("in the way")  # the ledger's folder cannot be made: the write fails
    costs.record(Event(EventKind.IMAGE, "job-0001", {"image": 0, "cost_usd": 0.05}))
    costs.ledger.parent.unlink()
    costs.record(Event(EventKind.IMAGE, "job-0001", {"image": 1, "cost_usd": 0.05}))
    entries = [Spend.from_line(line) for line in costs.ledger.read_bytes().splitlines()]
    assert [(entry.job, entry.image, entry.usd) for entry in entries] == [("job-0001", 0, 0.05), ("job-0001", 1, 0.05)]


async def test_an_image_recorded_as_the_queue_shuts_down_goes_into_the_ledger_too(tmp_path):
    record_hosted_job(tmp_path / "s", "job-0001", (0.05,))
    async with queue_on(tmp_path / "s", models_file(tmp_path)) as queue:
        queue.start(resume=False)
        data = {k: v for k, v in image_event(queue.session, "job-0001", 1, 0.05).items() if k not in ("type", "job")}
        queue._recorder.put(Event(EventKind.IMAGE, "job-0001", data))  # emitted, not yet recorded
        await queue.shut_down()  # the recording stops first: the drain records it
    assert [Spend.from_line(line).image for line in ledger_path().read_bytes().splitlines()] == [1]


def test_the_ledger_skips_a_torn_line_and_the_next_entry_starts_a_line_of_its_own(tmp_path):
    ledger = tmp_path / "spend.jsonl"
    record_spend(ledger, Spend(today(), "s", "job-0001", 0, "ideo", 0.05))
    with open(ledger, "ab") as f:
        f.write(b'{"date": "' + today().encode() + b'", "usd": 0.')  # a kill part way through a write
    assert day_spent(ledger) == 0.05
    record_spend(ledger, Spend(today(), "s", "job-0001", 1, "ideo", 0.05))
    assert day_spent(ledger) == 0.10
    lines = ledger.read_bytes().split(b"\n")
    assert lines[-1] == b"" and lines[-2].startswith(b'{"date"') and lines[-2].endswith(b"}")
    assert day_spent(tmp_path / "none.jsonl") == 0.0


def test_a_day_tally_reads_what_the_ledger_gains_and_starts_again_for_a_new_day_or_a_new_file(tmp_path):
    ledger = tmp_path / "spend.jsonl"
    tally = DayTally(ledger)
    assert tally.spent(today()) == 0.0
    record_spend(ledger, Spend(today(), "s", "job-0001", 0, "ideo", 0.05))
    record_spend(ledger, Spend("2020-01-01", "s", "job-0001", 1, "ideo", 1.0))
    assert tally.spent(today()) == 0.05
    with open(ledger, "ab") as f:
        f.write(b'{"date": "' + today().encode() + b'", "usd": 0.')  # a line being written, or torn by a kill
    assert tally.spent(today()) == 0.05
    record_spend(ledger, Spend(today(), "s", "job-0001", 2, "ideo", 0.04))
    assert tally.spent(today()) == 0.09 == day_spent(ledger)
    assert tally.spent("2020-01-01") == 1.0 and tally.spent(today()) == 0.09
    ledger.unlink()
    record_spend(ledger, Spend(today(), "s", "job-0002", 0, "ideo", 0.5))  # a new file, longer than the read
    assert tally.spent(today()) == 0.5
    ledger.write_bytes(b"")
    record_spend(ledger, Spend(today(), "s", "job-0003", 0, "ideo", 0.01))  # cut, and shorter
    assert tally.spent(today()) == 0.01


# what the CLI shows

def test_the_cli_refuses_a_job_over_budget_in_one_line(tmp_path):
    models_file(tmp_path, {"job_usd": 0.10})
    result = diffdeck("render", "a sign", "--model", "ideo", "--count", "3", "--session", "s", cwd=tmp_path, env=ENV)
    one_line_error(result, f"job-0001 would cost about $0.15 (3 x $0.05, ideo at {PUBLISHED}): over the job budget "
                           "of $0.10")
    one_line_error(diffdeck("render", "a sign", "--max-cost-usd", "0.1", cwd=tmp_path), "--max-cost-usd", "--route")


def test_ab_says_what_the_set_would_cost_next_to_its_jobs_before_queueing(tmp_path):
    models_file(tmp_path, {"session_usd": 0.05})
    result = diffdeck("ab", "a sign", "--vary", "model=demo,ideo", "--count", "2", "--seed", "3", "--session", "s",
                      cwd=tmp_path, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said, refused = result.stderr.splitlines()
    assert said == (f"A/B: 2 variants = 2 jobs, 4 images, seeds 3..4, 2 models · estimated cost about $0.10 (demo free; "
                    f"2 x $0.05, ideo at {PUBLISHED})")
    assert refused.startswith("diffdeck: error: the set's 2 jobs (job-0001 to job-0002) would cost about $0.10")


def test_sessions_lists_each_sessions_spend_and_the_days(tmp_path):
    root = tmp_path / "sessions"
    record_hosted_job(root / "a", "job-0001", (0.05, 0.05))
    record_hosted_job(root / "b", "job-0001", (0.04,))
    record_hosted_job(root / "c", "job-0001", (0.04, None, None), model="new")  # a model without a known price
    record_spend(ledger_path(), Spend(today(), "a", "job-0001", 0, "ideo", 0.14))
    shown = diffdeck("sessions", "sessions", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("sessions/a ") and lines[0].endswith("  ideo  $0.10"), lines
    assert lines[1].endswith("  $0.04"), lines
    assert lines[2].endswith("  new  at least $0.04 (2 images of unknown price)"), lines
    assert lines[3:] == [f"spent today ({today()}) on hosted models: $0.14, in {ledger_path()}"], "said once"


# spend that accumulates: rendered through the hosted worker

@pytest.mark.slow
def test_spend_accumulates_in_the_session_and_the_ledger_until_a_budget_stops_it(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        models_file(tmp_path, {"session_usd": 0.15, "day_usd": 0.20}, ideo={**IDEO, "base_url": fake.base_url})

        def render(session: str, count: int):
            return diffdeck("render", "a sign saying OPEN", "--model", "ideo", "--count", str(count), "--session",
                            f"sessions/{session}", cwd=tmp_path, env=ENV, timeout=120)

        made = render("one", 2)
        assert made.returncode == 0, made.stderr
        one_line_error(render("one", 2), "with $0.10 spent and $0.00 queued in this session, over the session budget "
                                         "of $0.15")
        one_line_error(render("two", 3), "with $0.10 spent today", "over the day's budget of $0.20")
        asked = len(fake.requests())
    assert asked == 2, "a request for each image (each with its seed); none for the refused jobs"
    images = Session.open(tmp_path / "sessions" / "one").jobs["job-0001"]["images"]
    assert [image["cost_usd"] for image in images] == [0.05, 0.05]
    entries = [Spend.from_line(line) for line in ledger_path().read_bytes().splitlines()]
    one = str(tmp_path / "sessions" / "one")
    assert [(e.session, e.job, e.image, e.model, e.usd) for e in entries] == [
        (one, "job-0001", 0, "ideo", 0.05), (one, "job-0001", 1, "ideo", 0.05)]


# what the workbench shows

async def test_the_workbench_shows_the_spend_each_images_cost_and_a_sets_estimate(tmp_path):
    from diffdeck.tui.app import Workbench
    from diffdeck.tui.config import load_config
    from diffdeck.tui.engine import LocalEngine
    from diffdeck.tui.images import image_widget
    from diffdeck.tui.screens.grid_dialog import GridDialog
    from diffdeck.tui.screens.image_view import ImageScreen
    from diffdeck.tui.themes import load_theme
    from diffdeck.tui.widgets.picker import Picker
    from helpers import screen_text

    record_hosted_job(tmp_path / "s", "job-0001", (0.05, 0.05))
    registry = load_registry(models_file(tmp_path))
    config = load_config(tmp_path / "config")
    app = Workbench(LocalEngine(registry, Session.open(tmp_path / "s"), devices=[CPU], telemetry_interval_s=0.2),
                    config, [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.board.telemetry is not None, timeout=30, what="the engine started")
        await until(pilot, lambda: "spent $0.10 this session" in screen_text(app), timeout=10, what="the spend")
        # a hosted job running, one image of it made (as its events come)
        for kind, data in ((EventKind.QUEUED, {"spec": JobSpec("a sign", model="ideo", count=2).to_dict()}),
                           (EventKind.DEQUEUED, {}),
                           (EventKind.IMAGE, {"image": 0, "seed": 1, "path": str(tmp_path / "s" / "images" / "job-0001-0.png"),
                                              "timings": {}, "peak_memory": 0, "cost_usd": 0.05})):
            app.board.apply(Event(kind, "job-0002", data))
        app._redraw()
        await until(pilot, lambda: "spent $0.15 this session" in screen_text(app), timeout=10, what="the new spend")
        assert "job-0002 running: about $0.10, $0.05 so far" in screen_text(app), screen_text(app)

        await pilot.press("f4", "enter")
        await until(pilot, lambda: isinstance(app.screen, ImageScreen), timeout=10, what="the image view")
        await until(pilot, lambda: any("cost" in line and "$0.05" in line for line in screen_text(app).splitlines()),
                    timeout=10, what="the image's cost row")
        await pilot.press("escape")

        app.query_one("#model", Picker).value = "ideo"
        await pilot.click("#prompt")
        await pilot.press(*"a sign", "ctrl+g", *"steps=4,8")
        assert isinstance(app.screen, GridDialog)
        await until(pilot, lambda: "2 jobs, 2 images, seeds" in screen_text(app), timeout=10, what="the grid counted")
        counted = str(app.screen.query_one("#grid-count").render())
        assert counted.startswith("2 = 2 jobs") and f"estimated cost about $0.10 (2 x $0.05, ideo at {PUBLISHED})" \
            in counted, counted
        await pilot.press("escape", "ctrl+t")
        await until(pilot, lambda: "A/B · taken: A" in screen_text(app), timeout=10, what="a variant taken")
        assert "2 jobs, estimated cost about $0.10" in str(app.query_one("#variants").render())
