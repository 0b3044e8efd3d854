"""Hosted models as models.yaml entries, and what the Dispatcher and the board make of them: read and
refused with one line each, their keys never written or shown, refused at submit before they cost
anything, placed on lanes of their own, and waited for on the board in place of steps. No worker
starts here (test_hosted_e2e.py renders through the fakes)."""

import io
import json
from pathlib import Path

import pytest
from diffdeck.engines.core.events import Event, EventKind, Status
from diffdeck.engines.core.flow_checks import HOSTED_IMAGE_S, estimate_seconds, route_job
from diffdeck.engines.core.flows import Stage
from diffdeck.engines.core.registry import RegistryError, load_registry
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.hosted.providers import provider
from diffdeck.engines.queue.devices import CPU
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.tui.cli.progress import Progress
from diffdeck.tui.widgets.prompt_editor import model_description
from diffdeck.tui.widgets.queue_view import MIN_PROMPT, PROGRESS_WIDTHS, column_widths, progress
from diffdeck.tui.workbench_state import Board, JobRow
from helpers import diffdeck, one_line_error, write_models

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-Zq81PmWn4TtV0xJd7Yc2Rb5Ue9Kh3Lf6"  # what a key looks like; it must never be shown
IDEO = {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY", "concurrency": 2,
        "options": {"magic_prompt_option": "OFF", "style_type": "DESIGN"}}


def registry_with(tmp_path, **models):
    return load_registry(write_models(tmp_path, models))


def refusal(tmp_path, entry) -> str:
    with pytest.raises(RegistryError) as e:
        registry_with(tmp_path, ideo=entry)
    return str(e.value)


def test_a_hosted_entry_is_read_with_its_provider_fields_and_needs_no_files(tmp_path):
    entry = {**IDEO, "base_url": "http://127.0.0.1:8123/", "price_usd": 0.05, "timeout_s": 30,
             "defaults": {"size": "1536x1024"}, "description": "typography"}
    registry = registry_with(tmp_path, ideo=entry, plain={"kind": "ideogram", "source": "V_2",
                                                           "api_key_env": "IDEOGRAM_API_KEY"})
    model = registry.get("ideo")
    assert (model.hosted, model.kind, model.source, model.api_key_env) == (True, "ideogram", "V_2_TURBO", "IDEOGRAM_API_KEY")
    assert (model.base_url, model.concurrency, model.price_usd, model.timeout_s) == ("http://127.0.0.1:8123", 2, 0.05, 30)
    assert model.options == {"magic_prompt_option": "OFF", "style_type": "DESIGN"}
    files = registry.files("ideo")
    assert files.problem is None and files.hosted == "ideogram" and "hosted" in files.note
    assert registry.memory_gb("ideo") == 0.0
    assert registry.defaults("plain", None) == {"width": 1024, "height": 1024}, "no steps or guidance: none are sent"
    assert registry.defaults("ideo", None) == {"width": 1536, "height": 1024}
    assert registry.describe("ideo")["hosted"] == {"provider": "ideogram", "model_id": "V_2_TURBO", "lanes": 2}
    assert registry.describe("demo")["hosted"] is None


@pytest.mark.parametrize("change, says", [
    ({"api_key": SECRET}, "keys go in the environment, never in a file"),
    ({"api_key_env": SECRET}, "keys go in the environment, never in a file"),
    ({"api_key_env": "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"}, "keys go in the environment, never in a file"),
    ({"api_key_env": "9LIVES"}, "api_key_env must be an environment variable's name"),
    ({"api_key_env": None}, "'api_key_env:' is missing"),
    ({"base_url": "ftp://example.com"}, "base_url must be an http:// or https:// URL"),
    ({"base_url": "https://user:hunter2@example.com"}, "base_url holds a user name or password"),
    ({"base_url": "http://api.example.com"}, "the key would cross the network in clear text; use https://"),
    ({"concurrency": 0}, "concurrency must be a whole number from 1 to 16"),
    ({"concurrency": 17}, "concurrency must be a whole number from 1 to 16"),
    ({"price_usd": -0.01}, "price_usd must be a number of US dollars"),
    ({"timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
    ({"price_usd": float("inf")}, "price_usd must be a number of US dollars"),
    ({"timeout_s": float("inf")}, "timeout_s must be a number of seconds above 0"),
    ({"options": {"style_type": "ULTRA"}}, "options.style_type: 'ULTRA' is not one of AUTO"),
    ({"source": "V_3"}, "source: 'V_3' is not an Ideogram model"),
    ({"options": ["quality"]}, "options must be a mapping"),
    ({"kind": "midjourney"}, "kind 'midjourney' is not one of diffusers, ideogram, imagen, gemini, openai"),
    ({"dtype": "float16"}, "'dtype' applies to a local model only"),
    ({"gpus": [0]}, "'gpus' applies to a local model only"),
    ({"seconds_per_step": 1.0}, "'seconds_per_step' applies to a local model only"),
    ({"defaults": {"steps": 20}}, "'steps' cannot be a default, as its provider takes no steps or guidance"),
    ({"source": None}, "the provider's model id"),
])
def test_a_bad_hosted_entry_is_refused_in_one_line_that_never_repeats_a_key(tmp_path, change, says):
    message = refusal(tmp_path, {k: v for k, v in {**IDEO, **change}.items() if v is not None})
    assert says in message and "model 'ideo'" in message and "\n" not in message, message
    assert SECRET not in message and "hunter2" not in message and "AIza" not in message


@pytest.mark.parametrize("key", ["api_key_env", "base_url", "concurrency", "price_usd", "timeout_s", "options"])
def test_a_hosted_models_key_on_a_local_entry_is_refused_naming_it(tmp_path, key):
    with pytest.raises(RegistryError, match=f"'{key}' applies to a hosted model only"):
        registry_with(tmp_path, local={"source": "org/name", key: IDEO.get(key) or "https://x.example"})


def test_models_lists_a_hosted_model_with_its_provider_and_whether_its_key_is_set_never_the_key(tmp_path):
    write_models(tmp_path, {"ideo": IDEO, "gpt": {"kind": "openai", "source": "gpt-image-1",
                                                  "api_key_env": "OPENAI_API_KEY"}})
    env = {"IDEOGRAM_API_KEY": SECRET, "OPENAI_API_KEY": ""}
    shown = diffdeck("models", cwd=tmp_path, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.split()[:4] == ["ideo", "ideogram", "hosted", "V_2_TURBO"] for line in lines), shown.stdout
    assert "ideo: its key's variable $IDEOGRAM_API_KEY is set" in shown.stdout
    assert "gpt: model 'gpt' needs its API key in $OPENAI_API_KEY, which is empty" in shown.stdout, \
        "an empty variable is no key"
    rows = {row["name"]: row for row in json.loads(diffdeck("models", "--json", cwd=tmp_path, env=env).stdout)}
    assert (rows["ideo"]["key_set"], rows["gpt"]["key_set"], rows["demo"]["key_set"]) == (True, False, None)
    assert SECRET not in shown.stdout + shown.stderr + json.dumps(rows)


def test_an_option_its_provider_does_not_take_is_refused_as_the_models_file_is_read(tmp_path):
    write_models(tmp_path, {"gpt": {"kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY",
                                    "options": {"quality": "ultra"}}})
    one_line_error(diffdeck("models", cwd=tmp_path, timeout=60),
                   "models.yaml: model 'gpt': options.quality: 'ultra' is not one of low, medium, high, auto")


def test_a_render_on_a_hosted_model_without_its_key_is_refused_in_one_line(tmp_path):
    write_models(tmp_path, {"ideo": IDEO})
    refused = diffdeck("render", "a poster", "--model", "ideo", cwd=tmp_path, env={"IDEOGRAM_API_KEY": ""}, timeout=60)
    one_line_error(refused, "model 'ideo' needs its API key in $IDEOGRAM_API_KEY, which is empty")
    assert not list(tmp_path.glob("sessions/*/images/*.png"))


def test_a_route_to_a_hosted_model_is_capped_on_a_rough_time_an_image(tmp_path):
    registry = registry_with(tmp_path, ideo={**IDEO, "roles": ["final"]})
    assert estimate_seconds(JobSpec("a poster", model="ideo", count=2), registry) == 2 * HOSTED_IMAGE_S
    assert route_job(JobSpec("a poster", route="final"), registry, max_cost_s=HOSTED_IMAGE_S).model == "ideo"
    assert route_job(JobSpec("a poster", route="final"), registry, max_cost_s=HOSTED_IMAGE_S / 2).route == "preview"


@pytest.fixture
def dispatcher(tmp_path, monkeypatch):
    """A Dispatcher (not started: nothing runs) on the CPU with a hosted model of two lanes."""
    monkeypatch.setenv("IDEOGRAM_API_KEY", "test-key")
    return Dispatcher(registry_with(tmp_path, ideo=IDEO), tmp_path / "images", devices=[CPU])


def test_a_hosted_job_is_resolved_at_its_providers_size_with_seeds_it_takes(dispatcher):
    largest = provider("ideogram").max_seed
    for _ in range(40):  # drawn over 2**32, about half the first seeds would be over Ideogram's largest
        job = dispatcher.resolve(JobSpec("a poster", model="ideo", count=4))
        assert all(0 <= seed <= largest for seed in job.seeds), job.seeds
    assert (job.width, job.height, job.steps, job.guidance) == (1024, 1024, None, None)


@pytest.mark.parametrize("spec, field", [
    (JobSpec("a poster", model="ideo", scheduler="euler"), "scheduler"),
    (JobSpec("a poster", model="ideo", steps=4), "steps"),  # not sent: images that differ by nothing, each paid
    (JobSpec("a poster", model="ideo", guidance=7.0), "guidance"),
    (JobSpec("a poster <lora:striped:0.8>", model="ideo"), "loras"),
    (JobSpec("a poster", model="ideo", seed=2**31), "seed"),
    (JobSpec("a poster", model="ideo", stages=(Stage("txt2img"),)), "stages[0]"),
    (JobSpec("a red star", model="demo", stages=(Stage("txt2img"), Stage("img2img", model="ideo", strength=0.5))),
     "stages[1]"),
])
def test_what_a_hosted_model_cannot_take_is_refused_at_submit_naming_the_field(dispatcher, spec, field):
    with pytest.raises(SpecError) as e:
        dispatcher.submit(spec)
    assert e.value.field == field, e.value
    assert not dispatcher.jobs, "nothing queued, no job number used"


def test_a_hosted_model_without_its_key_is_refused_at_submit(dispatcher, monkeypatch):
    monkeypatch.delenv("IDEOGRAM_API_KEY")
    with pytest.raises(RegistryError, match=r"needs its API key in \$IDEOGRAM_API_KEY, which is not set"):
        dispatcher.submit(JobSpec("a poster", model="ideo"))


def test_hosted_jobs_run_on_their_lanes_beside_local_ones_never_on_a_device(dispatcher):
    assert [slot.device.index for slot in dispatcher.devices] == [0], "the lanes are not devices"
    assert [slot.device.name for slot in dispatcher.lanes] == ["ideo lane 1", "ideo lane 2"]
    jobs = [dispatcher.submit(JobSpec("a poster", model="ideo")) for _ in range(3)]
    local = dispatcher.submit(JobSpec("a red star", model="demo"))
    starts = {start.job: start.gpu for plan in dispatcher._plan() for start in plan.starts}
    lanes = {slot.device.index for slot in dispatcher.lanes}
    assert starts[local.id] == 0, "a hosted job ahead takes no device from a local one"
    assert {starts[job.id] for job in jobs[:2]} == lanes and jobs[2].id not in starts, "one job a lane at a time"


def test_a_running_hosted_job_shows_what_it_waits_for_in_place_of_steps():
    row = JobRow("job-0001", {"model": "ideo", "prompt": "a poster", "count": 2}, Status.RUNNING,
                 progress={"image": 1, "count": 2, "step": 0, "total": 1, "waiting": "waiting for ideogram 12 s"})
    assert progress(row) == "waiting for ideogram 12 s img 2/2"
    row.progress = {"image": 0, "step": 0, "total": 1, "waiting": "ideogram answered 429: retrying in 5 s (attempt 2 of 4)"}
    assert progress(row, 16).startswith("ideogram answered 429")


def test_the_cli_shows_what_a_hosted_job_waits_for_and_keeps_each_retry_on_a_line_of_its_own():
    stream = io.StringIO()
    shown = Progress(stream)
    step = {"image": 0, "count": 1, "step": 0, "total": 1, "it_s": None}
    for waiting, retry in [("waiting for ideogram 3 s", None),
                           ("ideogram answered 429: retrying in 2 s (attempt 2 of 4)", 1),
                           ("ideogram answered 429: retrying in 1 s (attempt 2 of 4)", 1),
                           ("waiting for ideogram 0 s", None),
                           ("ideogram answered 503: retrying in 4 s (attempt 3 of 4)", 2)]:
        shown.show(Event(EventKind.STEP, "job-0001", {**step, "waiting": waiting, "retry": retry}))
    said = stream.getvalue()
    kept = [line.rsplit("\r", 1)[-1].strip() for line in said.split("\n")[:-1]]
    assert kept == ["job-0001: ideogram answered 429: retrying in 2 s (attempt 2 of 4)",
                    "job-0001: ideogram answered 503: retrying in 4 s (attempt 3 of 4)"], said
    assert "\rjob-0001: waiting for ideogram 3 s " in said and "step" not in said and "it/s" not in said


@pytest.mark.parametrize("room, progress_width, otherwise", [(100, 55, PROGRESS_WIDTHS[1]),
                                                            (68, 68 - 16 - MIN_PROMPT, PROGRESS_WIDTHS[0])])
def test_the_queue_gives_what_a_hosted_job_waits_for_the_prompts_room(room, progress_width, otherwise):
    waiting = "ideogram answered 429: retrying in 5 s (attempt 2 of 4)"  # 55 characters
    row = JobRow("job-0001", {"model": "ideo", "prompt": "a poster"}, Status.RUNNING, progress={"waiting": waiting})
    widths = column_widths([row], room)
    assert sum(widths[:2]) + widths[3] == 16 and widths[2] == progress_width and widths[4] == room - 16 - progress_width
    row.status = Status.DONE
    assert column_widths([row], room)[2] == otherwise, "the prompt has its room back"


def test_a_hosted_job_on_its_lane_is_on_none_of_the_boards_devices():
    board = Board()
    board.set_devices([{"index": 0, "name": "fake GPU 0", "gpu": True}, {"index": 1, "name": "fake GPU 1", "gpu": True}])
    board.jobs = {"job-0001": JobRow("job-0001", {"model": "ideo"}, Status.RUNNING, device=2),
                  "job-0002": JobRow("job-0002", {"model": "demo"}, Status.RUNNING, device=1)}
    assert board.device_tags() == {"job-0002": "gpu1"}


def test_the_model_pickers_tooltip_says_who_hosts_a_model():
    about = {"description": "typography", "hosted": {"provider": "ideogram", "model_id": "V_2_TURBO"}}
    assert model_description(about) == ("hosted by ideogram (model V_2_TURBO): each image is a paid request · "
                                         "typography")
    assert model_description({"description": "drawn shapes", "hosted": None}) == "drawn shapes"


@pytest.mark.parametrize("where", ["README.md", "models.example.yaml"])
def test_the_example_entries_one_per_provider_are_read_and_taken_by_their_providers(tmp_path, where):
    text = (ROOT / where).read_text(encoding="utf-8")
    if where == "README.md":  # the yaml block of "Hosted models"
        block = text.split("## Hosted models", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    else:  # the commented entries, from the first one on, uncommented
        lines = text.split("  # ideo:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        block = "models:\n  ideo:\n" + "\n".join(line.replace("  # ", "  ", 1) for line in lines if line != "  #")
    (tmp_path / "models.yaml").write_text(block, encoding="utf-8")
    models = [model for model in load_registry(tmp_path / "models.yaml").models.values() if model.hosted]
    assert sorted(model.kind for model in models) == ["gemini", "ideogram", "imagen", "openai"]
    for model in models:
        provider(model.kind).check_model(model)
