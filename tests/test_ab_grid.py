"""A/B sets and grids end to end: real workers, real sessions, the CLI as a user runs it."""

import json
import stat

import pytest
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.session import Session
from diffdeck.engines.sets.contact_sheet import contact_sheet
from diffdeck.engines.sets.variants import plan_grid
from helpers import diffdeck


@pytest.mark.slow
def test_ab_on_the_command_line_shares_seeds_and_each_image_rerenders_alone(tmp_path):
    result = diffdeck("ab", "a red circle", "a blue circle", "--seed", "40", "--count", "2", "--steps", "3",
                      "--session", "s", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "A/B: 2 variants = 2 jobs, 4 images, seeds 40..41" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary, images = lines[-1], lines[:-1]
    session = Session.open(tmp_path / "s")
    a, b = (session.jobs[v["job"]]["spec"] for v in session.sets["set-0001"]["variants"])
    assert a["seeds"] == b["seeds"] == [40, 41]
    assert {k for k in a if a[k] != b[k]} == {"prompt"}
    assert [p["image"] for p in summary["pairs"]] == [0, 1] and all(p["left"] == "A" for p in summary["pairs"])
    sheet, image = tmp_path / summary["sheets"][0], tmp_path / images[0]["path"]
    assert stat.S_IMODE(sheet.stat().st_mode) == stat.S_IMODE(image.stat().st_mode), "readable as the images are"

    for image in images:  # image i of each variant, alone, from its own record: the same pixels
        again = diffdeck("render", "--from", image["path"], "--session", "again", "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        path = json.loads(again.stdout)["path"]
        assert file_pixel_sha256(tmp_path / path) == file_pixel_sha256(tmp_path / image["path"])


@pytest.mark.slow
async def test_a_3x3_grid_loads_each_model_once_and_a_cancelled_cell_leaves_the_others(registry, tmp_path):
    grid = plan_grid(JobSpec(prompt="a red circle", seed=3, width=64, height=64),
                     {"x": "model=demo, demo2, tiny-sdxl", "y": "steps=2, 3, 4"})
    async with Dispatcher(registry, tmp_path, lookahead=1) as dispatcher:
        events = dispatcher.subscribe()
        set_id, jobs = dispatcher.submit_set(grid)
        assert len(jobs) == 9 and set_id == "set-0001"
        dispatcher.cancel(jobs[4].id)  # demo2 at steps=3
        for job in jobs:
            await dispatcher.wait(job.id)
        loads = [e.data["model"] for e in events.drain() if e.type == "loading"]
    assert loads == ["demo", "demo2", "tiny-sdxl"], "each model loaded once, in the set's order"
    assert [j.status for j in jobs] == [Status.DONE] * 4 + [Status.CANCELLED] + [Status.DONE] * 4
    assert [(j.spec.model, j.spec.steps) for j in jobs[3:6]] == [("demo2", 2), ("demo2", 3), ("demo2", 4)]
    assert {j.spec.seeds for j in jobs} == {(3,)} and {j.spec.group for j in jobs} == {"set-0001"}


def test_bad_grids_queue_nothing_and_say_why(tmp_path):
    for args, says in (
        (["--x", "steps="], "steps= has no values"),
        (["--x", "steps=10..30 step 0"], "step 0"),
        (["--x", "prompt=horse -> dog"], "'horse' is not a word of the prompt"),
        (["--x", "seed=1..60"], "60 jobs is more than 50; nothing queued (confirm, or pass --yes)"),
        (["--x", "model=demo, nope"], "variant model=nope: unknown model 'nope'"),
    ):
        result = diffdeck("grid", "a red circle", *args, "--session", "s", cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "s").exists(), "nothing queued, no session written"


@pytest.mark.slow
def test_a_replayed_ab_set_is_the_same_set_with_the_same_seeds(tmp_path):
    made = diffdeck("ab", "a red circle", "--vary", "steps=2,4", "--seed", "9", "--session", "s", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    replayed = diffdeck("replay", "s", "--check", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "2 identical" in replayed.stdout
    original, replay = Session.open(tmp_path / "s"), Session.open(tmp_path / "s" / "replay-1")
    assert replay.sets.keys() == {"set-0001"}
    assert [v["label"] for v in replay.sets["set-0001"]["variants"]] == ["A", "B"]
    assert [replay.jobs[v["job"]]["spec"]["steps"] for v in replay.sets["set-0001"]["variants"]] == [2, 4]
    assert ({tuple(j["spec"]["seeds"]) for j in replay.jobs.values()}
            == {tuple(j["spec"]["seeds"]) for j in original.jobs.values()} == {(9,)})

    part = diffdeck("replay", "s", "--jobs", "job-0002", cwd=tmp_path)  # B alone: a set of one variant
    assert part.returncode == 0, part.stdout + part.stderr
    alone = Session.open(tmp_path / "s" / "replay-2")
    assert [v["label"] for v in alone.sets["set-0001"]["variants"]] == ["B"]
    assert contact_sheet(alone, "set-0001")[0].is_file()


@pytest.mark.slow
def test_ab_varies_a_word_of_the_prompt(tmp_path):
    result = diffdeck("ab", "a red cat", "--vary", "cat -> dog", "--vary", "steps=2,3", "--session", "s",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    variants = Session.open(tmp_path / "s").sets["set-0001"]["variants"]
    assert [v["changes"] for v in variants] == [{"prompt": "a red cat", "steps": 2}, {"prompt": "a red dog", "steps": 3}]


@pytest.mark.slow
def test_ab_of_routes_that_render_other_sizes_says_the_pair_is_not_compared(tmp_path):
    result = diffdeck("ab", "a red circle", "--vary", "route=preview,final", "--size", "64x64", "--seed", "2",
                      "--session", "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "A vs B image 0 seed 2: sizes differ (64x64 vs 128x128): not compared" in result.stdout.splitlines()
    assert "PSNR" not in result.stdout
