"""Quality telemetry: the measures on synthetic images (what each must do, and scikit-image's figures
for blur effect and SSIM), their journal event and its replay into a real session folder, the
measuring of a session reopened with images not yet measured, and the values on screen and in
`diffdeck ab`'s summary."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from diffdeck.engines.core.events import Event, EventKind
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.record.session import JOURNAL, Session, SessionError
from diffdeck.engines.service import quality_recorder
from diffdeck.engines.service.quality_recorder import QualityRecorder, Stopped, Wanted, measure
from diffdeck.engines.service.recorded_queue import RecordedQueue
from diffdeck.engines.sets.quality import (
    blur_effect,
    colourfulness,
    entropy,
    full_reference,
    luma,
    no_reference,
    noise_sigma,
    scaled,
    sharpness,
    ssim,
)
from diffdeck.tui.cli.main import _render
from diffdeck.tui.engine import AttachedEngine
from diffdeck.tui.quality import figure, quality_rows, summary_lines
from diffdeck.tui.screens.compare import CompareScreen
from diffdeck.tui.screens.image_view import ImageScreen
from diffdeck.tui.widgets.gallery import Thumb
from diffdeck.tui.workbench_state import Board
from helpers import diffdeck, until
from PIL import Image
from test_tui import SIZE, make_app
from textual.widgets import DataTable, Static

EXAMPLES = Path(__file__).resolve().parent.parent / "sessions" / "examples"
NEAR = 1e-3  # measures are rounded to 4 decimals; float kernels differ in the last bits between CPUs


def scene(height: int = 48, width: int = 64) -> np.ndarray:
    """A sharp grey scene: 4-pixel checks over a ramp."""
    yy, xx = np.mgrid[0:height, 0:width]
    return (60 + ((xx // 4 + yy // 4) % 2) * 120 + xx % 64).astype(np.uint8)


def softened(a: np.ndarray) -> np.ndarray:
    """A 3x3 mean of `a`, its edges repeated."""
    p = np.pad(a.astype(float), 1, mode="edge")
    return np.rint(sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9).astype(np.uint8)


def grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a, "L").convert("RGB")


def noisy(a: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    """`a` with Gaussian noise of `sigma` levels, the same in every channel."""
    noise = np.random.default_rng(seed).normal(0, sigma, a.shape)
    return np.clip(np.rint(a + noise), 0, 255).astype(np.uint8)


def test_a_blurred_copy_is_less_sharp_and_has_a_higher_blur_effect_as_scikit_image_measures_it():
    sharp, soft = luma(grey(scene())), luma(grey(softened(scene())))
    assert sharpness(soft) < sharpness(sharp) / 2
    # scikit-image 0.26's blur_effect of these two images (computed there, with its own grey of equal channels)
    assert blur_effect(sharp) == pytest.approx(0.17835, abs=NEAR)
    assert blur_effect(soft) == pytest.approx(0.19658, abs=NEAR)
    assert blur_effect(luma(grey(np.full((32, 32), 90, np.uint8)))) == pytest.approx(1.0)  # nothing left to blur


@pytest.mark.parametrize("sigma", [3.0, 10.0])
def test_gaussian_noise_of_sigma_s_is_estimated_near_s(sigma):
    flat = np.full((128, 128), 128.0)
    assert noise_sigma(luma(grey(noisy(flat, sigma)))) == pytest.approx(sigma, rel=0.08)
    assert noise_sigma(luma(grey(flat.astype(np.uint8)))) == 0


def test_a_grey_image_has_no_colourfulness_and_a_flat_one_no_entropy():
    assert colourfulness(grey(scene())) == 0
    assert colourfulness(Image.new("RGB", (32, 32), (200, 30, 40))) > 30
    assert entropy(luma(Image.new("RGB", (32, 32), (200, 30, 40)))) == 0
    assert entropy(luma(grey(scene()))) > 4
    everything = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert entropy(luma(grey(everything))) == pytest.approx(8.0, abs=NEAR)  # every level once: 8 bits


def test_ssim_is_one_for_an_image_and_itself_symmetric_lower_under_noise_and_as_scikit_image_has_it():
    x = luma(grey(scene(96, 96)))
    light, heavy = luma(grey(noisy(scene(96, 96), 5))), luma(grey(noisy(scene(96, 96), 30)))
    assert ssim(x, x) == pytest.approx(1.0, abs=NEAR)
    assert ssim(x, heavy) == pytest.approx(ssim(heavy, x), abs=NEAR)
    assert 1 > ssim(x, light) > ssim(x, heavy) > 0
    # scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(luma(grey(scene())), luma(grey(softened(scene())))) == pytest.approx(0.67395, abs=NEAR)


def test_ms_ssim_likewise_with_as_many_scales_as_the_size_allows_and_ssim_its_first_scale():
    def ms_ssim(x, y) -> tuple[float, int]:
        measured = full_reference(x, y)
        return measured["ms_ssim"], measured["ms_ssim_scales"]

    x = luma(grey(scene(192, 192)))
    light, heavy = luma(grey(noisy(scene(192, 192), 5))), luma(grey(noisy(scene(192, 192), 30)))
    assert ms_ssim(x, x) == (pytest.approx(1.0, abs=NEAR), 5)
    assert ms_ssim(x, heavy)[0] == pytest.approx(ms_ssim(heavy, x)[0], abs=NEAR)
    assert 1 > ms_ssim(x, light)[0] > ms_ssim(x, heavy)[0] > 0
    assert full_reference(x, heavy)["ssim"] == ssim(x, heavy)
    small = luma(grey(scene(64, 64)))
    assert ms_ssim(small, small)[1] == 3  # 64, 32, 16: the next would be 8 < 11
    tiny = luma(grey(scene(8, 8)))
    assert full_reference(tiny, tiny) == {"ssim": None, "ms_ssim": None, "ms_ssim_scales": 0}
    with pytest.raises(ValueError, match="one size"):
        full_reference(x, small)


def test_an_image_over_2048_a_side_is_measured_on_a_copy_scaled_to_2048_and_the_record_says_so(tmp_path):
    wide = Image.fromarray(np.tile(scene(64, 64), (2, 33)), "L").convert("RGB")  # 2112x128
    wide.save(tmp_path / "wide.png")
    grey(scene()).save(tmp_path / "small.png")
    assert scaled(wide).size == (2048, 124) and scaled(grey(scene())).size == (64, 48)
    measured = measure(Wanted("job-0001", 0, tmp_path / "wide.png", None, ()), threading.Event())
    assert measured["measured_side"] == 2048
    assert measured["sharpness"] == no_reference(scaled(wide), luma(scaled(wide)))["sharpness"]
    assert "measured_side" not in measure(Wanted("job-0001", 0, tmp_path / "small.png", None, ()), threading.Event())


# the record

SPEC = {"prompt": "a red circle", "model": "demo", "negative_prompt": "", "seed": 5, "seeds": [5], "steps": 2,
        "guidance": 7.0, "width": 64, "height": 64, "scheduler": "euler", "count": 1, "group": "set-0001"}


def record_image(session: Session, job: str, pixels: np.ndarray, done: bool = False) -> None:
    session.append({"type": "queued", "job": job, "spec": SPEC, "position": 0})
    session.images_dir.mkdir(parents=True, exist_ok=True)
    path = session.images_dir / f"{job}-00-5.png"
    grey(pixels).save(path)
    session.append({"type": "image", "job": job, "image": 0, "seed": 5, "path": str(path), "pixel_sha256": job,
                    "timings": {}, "peak_memory": None})
    if done:  # nothing for `resume` to render again
        session.append({"type": "done", "job": job, "timings": {}, "peak_memory": None})


async def test_a_variant_made_before_the_first_is_measured_again_once_its_reference_comes(tmp_path):
    """The quality event in the journal, replayed into the session; B measured alone, then against A."""
    session = Session.open_for_writing(tmp_path / "s", "test")
    session.append({"type": "set", "set": "set-0001", "kind": "ab", "base": SPEC, "axes": [], "variants": [
        {"label": "A", "changes": {}, "cell": [0], "job": "job-0001"},
        {"label": "B", "changes": {"steps": 3}, "cell": [1], "job": "job-0002"}]})
    queue = RecordedQueue(load_registry(None), session)
    heard: list[Event] = []
    queue.listeners.append(heard.append)
    queue.start()
    try:
        record_image(session, "job-0002", softened(scene(64, 64)))
        queue.quality.recorded("job-0002", 0)
        await queue.quality.settled()
        alone = session.jobs["job-0002"]["images"][0]["quality"]
        assert "ssim" not in alone and "reference" not in alone, "nothing to compare with yet"

        record_image(session, "job-0001", scene(64, 64))
        queue.quality.recorded("job-0001", 0)
        await queue.quality.settled()
        journal = [json.loads(line) for line in (tmp_path / "s" / JOURNAL).read_text().splitlines()]
        replayed = Session.open(tmp_path / "s")  # the journal, read as a reopened session reads it
    finally:
        await queue.shut_down()
        session.close()
    assert [(e["type"], e["job"]) for e in journal if e["type"] == "quality"] == [
        ("quality", "job-0002"), ("quality", "job-0001"), ("quality", "job-0002")]
    b = replayed.jobs["job-0002"]["images"][0]["quality"]
    assert b["reference"] == "job-0001 image 0 (set-0001 A)" and b["ms_ssim_scales"] == 3
    assert b["ssim"] == pytest.approx(ssim(luma(grey(softened(scene(64, 64)))), luma(grey(scene(64, 64)))), abs=NEAR)
    assert b["blur"] > replayed.jobs["job-0001"]["images"][0]["quality"]["blur"]
    assert [(e.type, e.job) for e in heard] == [(EventKind.QUALITY, "job-0002"), (EventKind.QUALITY, "job-0001"),
                                                (EventKind.QUALITY, "job-0002")]
    assert Session.open(tmp_path / "s").jobs == replayed.jobs, "compacted as it was replayed"


async def reopen_and_measure(folder: Path) -> None:
    """Open a session as the workbench does, and wait until it measured what it holds."""
    session = Session.open_for_writing(folder, "test")
    queue = RecordedQueue(load_registry(None), session)
    queue.start()
    await queue.quality.settled(backlog=True)
    assert await queue.shut_down() is None
    session.close()


def quality_lines(folder: Path) -> list[dict]:
    return [event for event in map(json.loads, (folder / JOURNAL).read_text().splitlines()) if event["type"] == "quality"]


async def test_a_reopened_session_measures_what_was_not_and_a_bad_image_is_recorded_failed_once(tmp_path, caplog):
    """Sessions made before quality telemetry (the examples) read, and are measured when reopened:
    an A/B set against its first variant, a flow's final image against its previous stage. An image
    that cannot be read is logged and recorded so, and not measured again when the session is."""
    for name in ("demo-ab", "demo-flow"):
        shutil.copytree(EXAMPLES / name, tmp_path / name)
        assert all("quality" not in i for job in Session.open(tmp_path / name).jobs.values() for i in job["images"])
    (tmp_path / "demo-ab" / Session.open(tmp_path / "demo-ab").jobs["job-0001"]["images"][1]["path"]).write_bytes(
        b"not a PNG")
    with caplog.at_level(logging.WARNING, logger="diffdeck.quality"):
        for name in ("demo-ab", "demo-flow"):
            await reopen_and_measure(tmp_path / name)

    ab = Session.open(tmp_path / "demo-ab").jobs
    assert "could not measure the quality of job-0001 image 1: cannot be read (UnidentifiedImageError)" in caplog.text
    assert ab["job-0001"]["images"][1]["quality"] == {"failed": "cannot be read (UnidentifiedImageError)"}
    assert ab["job-0002"]["images"][0]["quality"]["reference"] == "job-0001 image 0 (set-0001 A)"
    assert {k: ab["job-0002"]["images"][1]["quality"][k] for k in ("ssim", "reference", "ssim_unmeasured")} == {
        "ssim": None, "reference": "job-0001 image 1 (set-0001 A)", "ssim_unmeasured": "cannot be read"}
    measured = len(quality_lines(tmp_path / "demo-ab"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffdeck.quality"):
        await reopen_and_measure(tmp_path / "demo-ab")
    assert len(quality_lines(tmp_path / "demo-ab")) == measured and not caplog.text, "measured once, failed or not"
    flow = Session.open(tmp_path / "demo-flow").jobs
    final = next(job for job in flow.values() if job.get("stages"))["images"][0]["quality"]
    assert final["reference"] == "stage 0 (txt2img) image 0, resized from 64x64"
    assert 0 < final["ssim"] < 1 and final["ms_ssim_scales"] == 4  # 128 px a side: 128, 64, 32, 16


async def test_an_attached_workbench_folds_a_daemons_quality_event_into_its_mirror_and_its_board(tmp_path):
    session = Session.open(tmp_path / "daemon")
    record_image(session, "job-0001", scene(64, 64))
    engine = AttachedEngine(None, "a daemon")
    engine.session = Session.adopt(tmp_path / "mirror", copy.deepcopy(session.record), "the daemon's record")
    board = Board()
    board.load(engine.session)
    quality = {"sharpness": 12.5, "blur": 0.25, "noise": 1.0, "colourfulness": 0.0, "entropy": 3.0}
    for event in await engine.absorb([Event(EventKind.QUALITY, "job-0001", {"image": 0, "quality": quality})]):
        board.apply(event)
    assert engine.session.jobs["job-0001"]["images"][0]["quality"] == quality
    assert board.jobs["job-0001"].images[0]["quality"] == quality


@pytest.mark.parametrize("hostile", [{"sharpness": "sharp"}, {"sharpness": 10**400}, {"sharpness": float("nan")},
                                     [1.5, 2.5]], ids=["text", "10**400", "NaN", "a list"])
async def test_quality_that_is_not_finite_numbers_is_refused_from_a_journal_and_from_a_daemon(tmp_path, hostile):
    session = Session.open(tmp_path / "s")
    record_image(session, "job-0001", scene(64, 64))
    engine = AttachedEngine(None, "a daemon")
    engine.session = Session.adopt(tmp_path / "mirror", copy.deepcopy(session.record), "the daemon's record")
    assert await engine.absorb([Event(EventKind.QUALITY, "job-0001", {"image": 0, "quality": hostile})]) == []
    assert "quality" not in engine.session.jobs["job-0001"]["images"][0], "dropped, and the workbench goes on"

    with pytest.raises(SessionError, match="not numbers"):
        session.measured("job-0001", 0, hostile)
    with (tmp_path / "s" / JOURNAL).open("a") as journal:
        journal.write(json.dumps({"type": "quality", "job": "job-0001", "image": 0, "quality": hostile}) + "\n")
    with pytest.raises(SessionError, match="not numbers"):
        Session.open(tmp_path / "s")
    assert figure(hostile, "sharpness") == "—" and quality_rows(hostile)[0][1] in ("—", "not measured yet")


async def test_why_ssim_is_missing_is_recorded_and_shown(tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "test")
    session.append({"type": "set", "set": "set-0001", "kind": "ab", "base": SPEC, "axes": [], "variants": [
        {"label": "A", "changes": {}, "cell": [0], "job": "job-0001"},
        {"label": "B", "changes": {"steps": 3}, "cell": [1], "job": "job-0002"}]})
    record_image(session, "job-0001", scene(8, 8), done=True)
    record_image(session, "job-0002", softened(scene(8, 8)), done=True)
    session.close()
    await reopen_and_measure(tmp_path / "s")
    b = Session.open(tmp_path / "s").jobs["job-0002"]["images"][0]["quality"]
    assert (b["ssim"], b["ssim_unmeasured"]) == (None, "too small for SSIM (8x8; it needs 11 pixels a side)")
    assert quality_rows(b)[-1] == ("SSIM", "not measured against job-0001 image 0 (set-0001 A): too small for SSIM "
                                           "(8x8; it needs 11 pixels a side)")


async def test_a_large_backlog_lets_the_event_loop_run_between_images_needing_no_measure(tmp_path):
    images = [{"image": 0, "seed": 5, "path": "images/gone.png", "timings": {}, "peak_memory": None}]
    record = {"format": 1, "name": "s", "models": {}, "sets": {},
              "jobs": {f"job-{n:04d}": {"spec": SPEC, "status": "done", "images": images} for n in range(1, 501)}}
    recorder = QualityRecorder(Session.adopt(tmp_path / "s", record, "a large session"), lambda event: None)
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(ticking())
    recorder.start(backlog=True)
    try:
        await asyncio.wait_for(recorder.settled(backlog=True), 60)
    finally:
        ticker.cancel()
        recorder.close()
    assert ticks > 250, "the workbench's screen kept being drawn as the backlog was gone through"


async def test_an_error_with_one_image_is_logged_and_the_next_is_measured(tmp_path, caplog):
    session = Session.open(tmp_path / "s")
    for job in ("job-0001", "job-0002"):
        record_image(session, job, scene(64, 64))
    told = []

    def tell(event: dict) -> None:  # a listener that fails once (a daemon's client gone, say)
        told.append(event["job"])
        if len(told) == 1:
            raise RuntimeError("a listener's bug")

    recorder = QualityRecorder(session, tell)
    recorder.start(backlog=False)
    try:
        with caplog.at_level(logging.WARNING, logger="diffdeck.quality"):
            for job in ("job-0001", "job-0002"):
                recorder.recorded(job, 0)
            await asyncio.wait_for(recorder.settled(), 60)
    finally:
        recorder.close()
    assert told == ["job-0001", "job-0002"] and "RuntimeError: a listener's bug" in caplog.text


async def test_the_cli_waits_for_the_measures_of_its_own_images_not_a_resumed_sessions_backlog(tmp_path):
    session = Session.open_for_writing(tmp_path / "s", "test")
    for n in range(1, 21):  # made before, never measured
        record_image(session, f"job-{n:04d}", noisy(scene(256, 256), 10, n), done=True)

    async def made_one(engine: RecordedQueue) -> list[str]:  # as if this command rendered an image
        record_image(session, "job-0021", scene(64, 64), done=True)
        engine.quality.recorded("job-0021", 0)
        return []

    assert await _render(load_registry(None), session, made_one, as_json=False, resume=True) == 0
    jobs = Session.open(tmp_path / "s").jobs
    assert "quality" in jobs["job-0021"]["images"][0]
    assert sum("quality" in job["images"][0] for job in jobs.values()) < len(jobs), "the rest: for the next open"


async def test_ctrl_c_stops_measuring_part_way_through_an_image(tmp_path, monkeypatch):
    session = Session.open_for_writing(tmp_path / "s", "test")
    go_on = quality_recorder._go_on
    ctrl_c = []

    def pressed_mid_image(stop: threading.Event) -> None:  # Ctrl-C once measuring is under way, whatever the CPU
        if not ctrl_c:
            ctrl_c.append(os.kill(os.getpid(), signal.SIGINT))
            stop.wait(30)  # the command's handler, on the event loop, sets it
        go_on(stop)

    monkeypatch.setattr(quality_recorder, "_go_on", pressed_mid_image)

    async def made_two(engine: RecordedQueue) -> list[str]:
        for job in ("job-0001", "job-0002"):
            record_image(session, job, np.tile(scene(64, 64), (32, 32)), done=True)
            engine.quality.recorded(job, 0)
        return []

    assert await _render(load_registry(None), session, made_two, as_json=False) == 0
    assert ctrl_c, "measuring began"
    jobs = Session.open(tmp_path / "s").jobs
    assert all("quality" not in job["images"][0] for job in jobs.values()), "left for the next open"
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        measure(Wanted("job-0001", 0, session.resolve(jobs["job-0001"]["images"][0]["path"]), None, ()), stop)


def test_rows_and_summary_say_what_was_measured_and_a_dash_for_what_was_not():
    measured = {"sharpness": 118.5044, "blur": 0.4338, "noise": 0.3489, "colourfulness": 68.79, "entropy": 4.96,
                "ssim": 0.4491, "ms_ssim": 0.0765, "ms_ssim_scales": 3, "reference": "job-0001 image 0 (set-0001 A)"}
    assert quality_rows(None) == [("quality", "not measured yet")]
    assert quality_rows(measured)[-2:] == [("SSIM", "0.4491 against job-0001 image 0 (set-0001 A)"),
                                           ("MS-SSIM", "0.0765 at 3 scales")]
    header, a, b = summary_lines([{"label": "A", "image": 0, "seed": 7, "quality": {**measured, "ssim": None}},
                                  {"label": "B", "image": 0, "seed": 7, "quality": measured}])
    assert header.split() == ["image", "seed", "sharpness", "blur", "effect", "noise", "σ", "colourfulness", "entropy",
                              "bits", "SSIM", "MS-SSIM", "variant"]
    assert a.split() == ["0", "7", "118.5", "0.434", "0.35", "68.8", "4.96", "—", "0.0765", "A"]
    assert b.split()[-3:] == ["0.4491", "0.0765", "B"]


# on screen

def table_rows(screen) -> dict[str, list[str]]:
    table = screen.query_one(DataTable)
    return {str(row[0]): [str(cell) for cell in row[1:]] for row in map(table.get_row_at, range(table.row_count))}


async def open_image(pilot, job_id: str, index: int) -> ImageScreen:
    thumb = next(t for t in pilot.app.query(Thumb) if (t.job_id, t.image) == (job_id, index))
    thumb.focus()
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, ImageScreen), timeout=5, what="the image view")
    return pilot.app.screen


async def test_the_image_and_compare_views_show_what_each_image_measures_and_the_ssim_between_them(tmp_path):
    shutil.copytree(EXAMPLES / "demo-ab", tmp_path / "s")
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        images = [(job_id, i["image"]) for job_id, job in app.session.jobs.items() for i in job["images"]]
        await until(pilot, lambda: all("quality" in i for row in app.board.jobs.values() for i in row.images),
                    timeout=10, what="the session's images measured as it opened")
        recorded = {(job_id, i["image"]): i["quality"] for job_id, job in app.session.jobs.items() for i in job["images"]}
        assert set(recorded) == set(images)
        a, b = recorded["job-0001", 0], recorded["job-0002", 0]

        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="the compare view")
        rows = table_rows(app.screen)
        for name, label in (("sharpness", "sharpness"), ("blur", "blur effect"), ("entropy", "entropy bits")):
            assert rows[label] == [figure(a, name), figure(b, name)]
        await until(pilot, lambda: "SSIM" in str(app.screen.query_one("#measures", Static).render()), timeout=10,
                    what="the SSIM of the pair")
        assert f"SSIM {b['ssim']:.4f}" in str(app.screen.query_one("#measures", Static).render())
        await pilot.press("escape")

        screen = await open_image(pilot, "job-0002", 0)
        rows = table_rows(screen)
        assert rows["noise σ"] == [figure(b, "noise")] and rows["colourfulness"] == [figure(b, "colourfulness")]
        assert rows["SSIM"] == [f"{b['ssim']:.4f} against job-0001 image 0 (set-0001 A)"]
        assert rows["MS-SSIM"] == [f"{b['ms_ssim']:.4f} at 3 scales"]
        await pilot.press("escape")

        # an image in view as its measures come: they are shown when recorded
        del app.session.jobs["job-0001"]["images"][0]["quality"]
        app.board.jobs["job-0001"].images = [{k: v for k, v in i.items() if k != "quality"}
                                             for i in app.board.jobs["job-0001"].images]
        screen = await open_image(pilot, "job-0001", 0)
        assert table_rows(screen)["quality"] == ["not measured yet"]
        app.engine.queue.quality.recorded("job-0001", 0)
        await until(pilot, lambda: "sharpness" in table_rows(screen), timeout=10, what="the measures in view")
        assert table_rows(screen)["sharpness"] == [figure(a, "sharpness")]


async def test_the_compare_view_shows_the_recorded_ssim_measures_a_pair_once_and_a_pick_redraws_once(tmp_path,
                                                                                                  monkeypatch):
    shutil.copytree(EXAMPLES / "demo-ab", tmp_path / "s")
    measured, redrawn = [], []
    measure_pair, redraw = CompareScreen._measure, CompareScreen.refresh_view
    monkeypatch.setattr(CompareScreen, "_measure", lambda screen, *pair: measured.append(pair) or measure_pair(screen, *pair))
    monkeypatch.setattr(CompareScreen, "refresh_view", lambda screen: redrawn.append(1) or redraw(screen))
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: all("quality" in i for row in app.board.jobs.values() for i in row.images),
                    timeout=10, what="the session's images measured as it opened")
        b = app.board.jobs["job-0002"]
        b.images = [{**i, "quality": {**i["quality"], "ssim": 0.1234}} if i["image"] == 0 else i for i in b.images]
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="the compare view")
        measures = app.screen.query_one("#measures", Static)
        await until(pilot, lambda: "SSIM" in str(measures.render()), timeout=10, what="the difference of the pair")
        assert "SSIM 0.1234" in str(measures.render()), "the session's, not measured again"

        redrawn.clear()
        await pilot.press("b")  # B wins
        await until(pilot, lambda: "B 1" in str(app.screen.query_one("#compare-title", Static).render()), timeout=5)
        await pilot.pause(0.6)  # a redraw the engine's events would bring comes within a quarter second
        assert len(redrawn) == 1, "a pick redraws the view once"
        title = app.screen.query_one("#compare-title", Static)
        await pilot.press("n")
        await until(pilot, lambda: "image 2/2" in str(title.render()) and "SSIM" in str(measures.render()), timeout=10)
        await pilot.press("p")
        await until(pilot, lambda: "image 1/2" in str(title.render()), timeout=5)
        assert len(measured) == 2, "each pair measured once, however often it is drawn"

        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 images are now bombs PIL refuses to open
        await pilot.press("w")  # the swapped pair: not measured yet
        await until(pilot, lambda: "cannot read an image (DecompressionBombError" in str(measures.render()), timeout=10,
                    what="the reason said, not 'measuring' for ever")


@pytest.mark.slow
def test_ab_prints_each_images_measures_and_leaves_them_in_the_session(tmp_path):
    result = diffdeck("ab", "a red circle", "a blue circle", "--seed", "7", "--steps", "2", "--session",
                      str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = Session.open(tmp_path / "s").jobs
    a, b = (jobs[job_id]["images"][0]["quality"] for job_id in ("job-0001", "job-0002"))
    assert "reference" not in a and b["reference"] == "job-0001 image 0 (set-0001 A)"
    table = result.stdout.split("quality (SSIM, MS-SSIM: against the first variant's image", 1)[1].splitlines()[1:]
    assert table[0].split()[:3] == ["image", "seed", "sharpness"]
    assert table[1].split() == ["0", "7", *(figure(a, name) for name in
                                            ("sharpness", "blur", "noise", "colourfulness", "entropy")), "—", "—", "A"]
    assert table[2].split()[-3:] == [figure(b, "ssim"), figure(b, "ms_ssim"), "B"]
