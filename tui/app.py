"""The workbench: a client of the engine, in this process or an engine daemon's (diffdeck.tui.engine).
Widgets post messages; the handlers here own the state (the session, the Board, the engine) and
hand the widgets what to draw.

In this process, two subscribers read the Dispatcher's events: the session records each one as it
comes (a kill loses nothing; diffdeck.engines.service.recorded_queue), and the Board folds them in batches, redrawn a few
times a second. Attached to a daemon, the daemon records, and the Board folds what comes over
the connection.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from diffdeck.engines.core.events import UNFINISHED, VERDICT_EVENTS, Event, EventKind, Status
from diffdeck.engines.core.registry import DeviceError, RegistryError
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.core.text import counted, visible
from diffdeck.engines.daemon.wire import DaemonError
from diffdeck.engines.record.session import Session, SessionWriteError
from diffdeck.engines.sets.variants import VariantSet, plan_ab
from diffdeck.themes import STYLESHEET
from diffdeck.tui.config import Config, ConfigError, save_setting
from diffdeck.tui.engine import AttachedEngine, LocalEngine, Started
from diffdeck.tui.history import HistoryError, history_file, load_history, save_history
from diffdeck.tui.images import thumbnail
from diffdeck.tui.plain import plain
from diffdeck.tui.promote import PROMOTED_TO, again, promoted
from diffdeck.tui.widgets.footer import Footer
from diffdeck.tui.widgets.gallery import Gallery, Thumb
from diffdeck.tui.widgets.gpu_panel import PRESSURE_COLOURS, GpuPanel
from diffdeck.tui.widgets.prompt_editor import PromptEditor
from diffdeck.tui.widgets.queue_view import QueueView, queue_title
from diffdeck.tui.workbench_state import Board
from textual import events, on, work
from textual.app import App, ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import Static

if TYPE_CHECKING:  # the screens load as they first open, not before the first frame
    from diffdeck.tui.screens.compare import CompareScreen
    from diffdeck.tui.screens.grid_dialog import GridDialog
    from diffdeck.tui.screens.grid_view import GridView

REDRAW_S = 0.25  # progress coalesces: at most four redraws a second
LARGE_PX = 512
WORKER_EVENTS = frozenset({EventKind.LOADING, EventKind.WORKER_READY, EventKind.WORKER_EXITED,
                           EventKind.WORKER_EVICTED})
# what may change an open set view: a new image, what it measures, or a job of it ending without one
SET_VIEW_EVENTS = frozenset({EventKind.IMAGE, EventKind.QUALITY, EventKind.DONE, EventKind.FAILED,
                             EventKind.CANCELLED})


HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]  # the stylesheet lays out 80x24 as its own size
VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]


def breakpoint_class(size: int, breakpoints: list[tuple[int, str]]) -> str | None:
    """The class of the largest breakpoint `size` reaches (as Textual's Screen picks it)."""
    return max(((at, name) for at, name in breakpoints if size >= at), default=(0, None))[1]


def size_classes(size: Size) -> dict[str, bool]:
    """Each breakpoint class, on or off, for a screen of this size."""
    on = {breakpoint_class(size.width, HORIZONTAL_BREAKPOINTS), breakpoint_class(size.height, VERTICAL_BREAKPOINTS)}
    return {name: name in on for _, name in (*HORIZONTAL_BREAKPOINTS, *VERTICAL_BREAKPOINTS)}


class MainScreen(Screen):
    """The workbench's screen, without two things Textual does again for nothing as it starts.
    It restyles a screen's every widget when the screen resumes, which the first time is right
    after each widget was styled as it mounted: a third of the styling before the first frame
    (what changes after a mount restyles what it changes). And it lays the screen out again, all
    of it, at each resize event, and three come at the start for the size the screen already has:
    each a second and third frame drawn whole, while the first is on its way to the terminal."""

    _resumed = False

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        if not self._resumed:  # runs before Screen's own handler, which reads this
            self._resumed = True
            event.refresh_styles = False

    def on_resize(self, event: events.Resize) -> None:
        if event.size == self._compositor.size:  # laid out at this size already (under a modal, say)
            event.prevent_default()  # Screen's own handler, which would lay it all out again
            self.update_classes(size_classes(event.size))  # what that handler sets besides


class Workbench(App):
    CSS_PATH = STYLESHEET
    TITLE = "diffdeck"
    AUTO_FOCUS = "#prompt"
    HORIZONTAL_BREAKPOINTS = HORIZONTAL_BREAKPOINTS
    VERTICAL_BREAKPOINTS = VERTICAL_BREAKPOINTS
    BINDINGS = [
        Binding("f1", "help", "Keys", id="help"),
        Binding("f2", "focus('prompt')", "Prompt", id="focus_prompt"),
        Binding("f3", "focus('queue')", "Queue", id="focus_queue"),
        Binding("f4", "focus_gallery", "Gallery", id="focus_gallery"),
        Binding("f5", "compare", "Compare", id="compare"),
        Binding("f10", "detach", "Detach", id="detach", show=False),  # the title says so when attached
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(self, engine: LocalEngine | AttachedEngine, config: Config, themes: list[Theme], *,
                 image_class: Any = None, hint: str | None = None, history: Path | None = None):
        """An AttachedEngine comes started (its models are the daemon's); a LocalEngine starts
        after the first frame. `history`: the prompt history's file (diffdeck.tui.history; by
        default under $XDG_STATE_HOME)."""
        super().__init__()
        self.animation_level = "none"  # over SSH every animation frame is bytes on the wire
        self.engine, self.config, self.themes = engine, config, themes
        self.image_class, self.hint = image_class, hint
        self.board = Board(estimate=engine.estimate)
        self._titles: tuple[str, str] = ("", "")  # the app's and the queue's, as last drawn
        models = engine.models()
        self.first_model = "demo" if "demo" in models else models[0]
        self.pinned: list[tuple[str, int]] = []
        self.marks: dict[tuple[str, int], str] = {}  # what the user said of each image (Session.image_marks)
        self._following: asyncio.Task | None = None
        self._leaving = False  # the engine is shut down, or being shut down: it starts no more
        self.start_error: str | None = None  # why the local engine could not start
        self._busy = False  # jobs queued or running at the last redraw: its end is announced
        for theme in themes:
            self.register_theme(theme)
        self._set_first_theme(config.theme)
        self.set_keymap(config.keys)
        self.history_file: Path | None = history or history_file()
        try:
            self._history = load_history(self.history_file)
        except HistoryError as e:
            self._history, self.history_file = [], None  # not written over
            self._history_problem: str | None = str(e)
        else:
            self._history_problem = None

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast. Never markup, whatever the caller asks: notifications carry errors, prompts,
        paths, the daemon's words; their control characters are shown, not sent to the terminal."""
        super().notify(visible(message, newlines=True), title=visible(title), severity=severity, timeout=timeout,
                       markup=False)

    def _set_first_theme(self, name: str) -> None:
        """What Textual's theme watcher does, but for the reparse of the whole stylesheet it
        queues: before the app runs nothing is parsed yet, and that reparse would parse every
        source twice before the first frame (set on mount, a theme restyles every widget too)."""
        if self.get_theme(name) is None:
            raise ConfigError(f"theme {name!r} is not known; themes: {', '.join(self.available_themes)}")
        self.set_reactive(App.theme, name)
        dark = self.current_theme.dark
        self.update_classes({f"-theme-{name}": True, "-dark-mode": dark, "-light-mode": not dark}, update=False)
        self._refresh_truecolor_filter(self.ansi_theme)
        self.stylesheet.set_variables(self.get_css_variables())

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(PRESSURE_COLOURS)

    def get_default_screen(self) -> Screen:
        """The screen with its breakpoint classes for the terminal's size already set: set at its
        first resize (Textual's way), they would style every widget a second time before the
        first frame."""
        return MainScreen(id="_default", classes=" ".join(name for name, on in size_classes(self.size).items() if on))

    def compose(self) -> ComposeResult:
        yield Static(plain(self._title_text()), id="title")
        with Vertical(id="main"):  # two rows, each split on its own: the queue wants width, the editor height
            with Horizontal(id="top"):
                yield PromptEditor(self.engine.models(), self.first_model, self._history,
                                   {name: route["about"] for name, route in self.engine.routes().items()},
                                   self.engine.cost_note, id="editor")
                yield GpuPanel(id="gpu")
            with Horizontal(id="bottom"):
                yield QueueView(id="queue")
                yield Gallery(self.image_class, id="gallery")
        if self.hint:
            yield Static(self.hint, id="hint")
        yield Footer()

    @property
    def session(self) -> Session:
        """What the views read: the session being recorded, or an attached daemon's, mirrored."""
        return self.engine.session

    def _title_text(self) -> str:
        engine = f" · engine: {self.engine.where} (F10 detaches; the queue goes on)" if self.engine.attached else ""
        return f"diffdeck · session {self.engine.session_name}{engine}"

    async def on_mount(self) -> None:
        self.board.load(self.session)
        self.marks = self.session.image_marks()
        self._show_model(self.first_model)
        if self._hosted_by:
            self._show_warm_models()
        self._redraw()
        if self.engine.started:  # an attached engine comes started
            self._engine_started(self.engine.started)
        else:  # after the first frame
            self.call_after_refresh(self._start_engine)

    async def _start_engine(self) -> None:
        if self._leaving:
            return
        try:
            started = await self.engine.start()
        except DeviceError as e:  # the devices as declared cannot be read: `diffdeck` says so on the terminal
            self.start_error = str(e)
            self.exit(return_code=2)
            return
        self._engine_started(started)

    def _engine_started(self, started: Started) -> None:
        """Follow the engine's events; say what its start found (jobs not resumed, a daemon's
        warm models) and what the session's opening did."""
        self.board.set_devices(started.devices)
        self.board.lanes = self.engine.lanes()
        self.board.set_day(self.engine.day_spend())
        for event in started.preface:
            self.board.apply(event)
        self._following = asyncio.create_task(self._follow(started.events))
        for task in (*started.watched, self._following):
            task.add_done_callback(self._task_ended)
        if started.preface:
            self._show_warm_models()
        for job_id, error in started.refused:
            self.board.not_resumed(job_id, error)
            self.notify(f"{job_id} not resumed: {error}", severity="error", timeout=10)
        for notice in self.session.notices:  # a lock taken over, a torn journal line set aside
            self.notify(notice, severity="warning", timeout=20)
        if self._history_problem:
            self.notify(self._history_problem, severity="warning", timeout=20)
        if not self.engine.attached:
            self.run_worker(self._warn_if_a_daemon_holds(), group="probe")
        self._redraw()

    async def _warn_if_a_daemon_holds(self) -> None:
        """An engine daemon running beside this workbench's own engine: its warm models would load
        here a second time, in twice the memory."""
        from diffdeck.engines.daemon.client import daemon_holding  # the daemon's modules: after the first frame

        warning = await daemon_holding(self.engine.models())
        if warning:
            self.notify(f"{warning}; diffdeck without a session attaches to the daemon instead",
                        severity="warning", timeout=20)

    async def action_quit(self) -> None:
        self.query_one("#title", Static).update(plain(self._leaving_text()))
        await self._shut_down()
        self.exit()

    def farewell(self) -> str:
        """What the terminal is left with: where the session is, and the command that goes back to it."""
        if self.engine.attached:
            again = f"diffdeck --remote {shlex.quote(self.engine.where)}" if self.engine.remote else "diffdeck"
            return (f"diffdeck: detached; the engine daemon's session {self.engine.session_name} goes on. "
                    f"{again} attaches again")
        if not self.session.folder.is_dir():  # nothing was recorded: the new session's folder is gone again
            return "diffdeck: nothing was queued, so no session was kept"
        left = sum(job["status"] in UNFINISHED for job in self.session.jobs.values())
        queued = f" ({counted(left, 'job')} queued, resumed when it opens)" if left else ""
        folder = shlex.quote(str(self.session.folder))
        return f"diffdeck: session {folder}{queued}; reopen it with: diffdeck {folder}"

    def _leaving_text(self) -> str:
        """What quitting waits for, shown while it does (a running job stops within a step, then
        each worker process exits)."""
        if self.engine.attached:
            return f"detaching from the engine on {self.engine.where}; its queue goes on…"
        running = [row.id for row in self.board.running()]
        waits = [f"{', '.join(running)} to stop at {'their' if len(running) > 1 else 'its'} next step"] if running else []
        if self.board.warm:
            waits.append(f"the worker{'s' * (len(self.board.warm) > 1)} ({', '.join(self.board.warm_models())}) to exit")
        return f"quitting: waiting for {' and '.join(waits)}…" if waits else "quitting…"

    async def action_detach(self) -> None:
        """Leave an engine daemon's queue running (as quitting does), with a key that says so."""
        if not self.engine.attached:
            self.notify("F10 detaches from an engine daemon (diffdeck serve) and leaves its queue running; this "
                        "workbench runs its own engine, which stops with it. ctrl+q quits; what is queued stays "
                        "queued in the session", severity="warning", timeout=10)
            return
        await self.action_quit()

    async def on_unmount(self) -> None:
        await self._shut_down()  # however the app ends, the workers do not outlive it

    async def _shut_down(self) -> None:
        """Workers of this process do not outlive the app (queued and running jobs stay queued in the
        session); a daemon's go on."""
        self._leaving = True
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        await self.engine.shut_down()

    def _task_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if isinstance(error, SessionWriteError):
                self._cannot_record()
                return
            if isinstance(error, DaemonError):
                self.notify(f"{error}. Its queue goes on there: quit, and open diffdeck again to attach",
                            title="the connection to the engine daemon is gone", severity="error", timeout=60)
                return
            self.notify(f"{type(error).__name__}: {error}. The session is no longer being recorded or the "
                        "screen updated; quit and reopen it", title="diffdeck stopped following the queue",
                        severity="error", timeout=60)

    async def _follow(self, events) -> None:
        while True:
            try:
                batch = await self.engine.absorb([await anext(events), *events.drain()])
            except StopAsyncIteration:  # only an attached engine's events end
                raise DaemonError(self.engine.client.closed_because) from None
            for event in batch:
                self.board.apply(event)
                if event.type == EventKind.QUALITY:
                    self._measured(event)
            if any(e.type in WORKER_EVENTS for e in batch):
                self._show_warm_models()
            self._redraw()
            if any(e.type in VERDICT_EVENTS for e in batch):  # said in another attached workbench
                await self._said_of_images()
            elif any(e.type in SET_VIEW_EVENTS for e in batch):
                await self._refresh_set_view()
            await asyncio.sleep(REDRAW_S)

    def _redraw(self) -> None:
        self.query_one(QueueView).show(self.board.rows(), self.board.variant_of, self.board.device_tags())
        self.query_one(GpuPanel).show(self.board)
        self.query_one(Gallery).show(self.board, self.marks)
        paused = " · queue paused (p in the queue resumes)" if self.board.paused else ""
        titles = (self._title_text() + paused, queue_title(self.board))
        if titles != self._titles:  # each update repaints; four redraws a second mostly change nothing here
            self._titles = titles
            self.query_one("#title", Static).update(plain(titles[0]))
            self.query_one(QueueView).border_title = titles[1]
        busy = bool(self.board.queue or self.board.running())
        if self._busy and not busy:
            self._queue_emptied()
        self._busy = busy

    def _queue_emptied(self) -> None:
        """The terminal bell or an OSC 9 notification (config.yaml `notify:`), for whoever looked away."""
        if self.config.notify == "off" or self._driver is None:
            return
        done = sum(row.status == Status.DONE for row in self.board.jobs.values())
        name = visible(self.engine.session_name)  # nothing in it may end the escape sequence
        self._driver.write("\a" if self.config.notify == "bell" else
                           f"\x1b]9;diffdeck: the queue is empty ({done} jobs done in {name})\a")

    def _accepted(self, spec: JobSpec) -> None:
        """The editor's job was queued: it remembers the prompt, and the history is saved."""
        editor = self.query_one(PromptEditor)
        editor.accepted(spec)
        if self.history_file is None:
            return
        try:
            save_history(self.history_file, editor.history)
        except HistoryError as e:
            self.history_file = None  # said once
            self.notify(str(e), severity="warning")

    def _show_warm_models(self) -> None:
        """The picker's labels: each model's name, who renders a hosted one, and whether it is warm."""
        states = self.board.warm_models()
        labels = {name: " · ".join(filter(None, (name, self._hosted_by.get(name), states.get(name))))
                  for name in self.engine.models()}
        self.query_one(PromptEditor).show_models(labels)

    @cached_property
    def _hosted_by(self) -> dict[str, str]:
        """Model -> "hosted by PROVIDER", for the hosted models among the engine's (its models file
        or the daemon's menu: nothing looked up)."""
        return {name: f"hosted by {provider}" for name, provider in self.engine.providers().items()}

    def _show_model(self, model: str) -> None:
        try:
            self.query_one(PromptEditor).show_model(self.engine.describe(model))
        except RegistryError as e:
            self.notify(str(e), severity="error")

    # the prompt editor

    @on(PromptEditor.Submitted)
    async def _submit(self, event: PromptEditor.Submitted) -> None:
        queued = await self._from_editor(lambda: self.engine.calls.submit(event.spec))
        if queued is not None:
            self._accepted(JobSpec.from_dict(queued.spec))

    @on(PromptEditor.VariantsSubmitted)
    async def _submit_variants(self, event: PromptEditor.VariantsSubmitted) -> None:
        async def queue() -> tuple[VariantSet, str]:
            variants = plan_ab(event.specs)
            set_id, _jobs = await self.engine.calls.submit_set(variants)
            return variants, set_id

        queued = await self._from_editor(queue)
        if queued is not None:
            variants, set_id = queued
            self._accepted(variants.base)
            self.notify(f"{set_id}: A/B, {variants.describe()}; F5 compares them")

    async def _from_editor(self, queue: Callable[[], Awaitable[Any]]) -> Any:
        """Queue what the editor asked for; a value that cannot be used is marked on its field."""
        editor = self.query_one(PromptEditor)
        try:
            return await queue()
        except SpecError as e:
            editor.mark_invalid(e)
        except RegistryError as e:
            editor.mark_invalid(SpecError("model", str(e)))
        except DaemonError as e:  # the daemon's own check, or the connection
            self.notify(str(e), severity="error", timeout=10)
        return None

    @on(PromptEditor.GridRequested)
    def _grid_dialog(self, event: PromptEditor.GridRequested) -> None:
        from diffdeck.tui.screens.grid_dialog import GridDialog

        self.push_screen(GridDialog(event.spec, self.engine.cost_note))

    async def on_grid_dialog_queue(self, event: GridDialog.Queue) -> None:
        try:
            set_id, _jobs = await self.engine.calls.submit_set(event.variants)
        except (SpecError, RegistryError, DeviceError, DaemonError) as e:
            event.dialog.refused(str(e))
            return
        event.dialog.dismiss()
        self._accepted(event.variants.base)
        self.notify(f"{set_id}: grid, {event.variants.describe()}; F5 shows it")

    @on(PromptEditor.ModelChanged)
    def _model_changed(self, event: PromptEditor.ModelChanged) -> None:
        self._show_model(event.model)

    @on(PromptEditor.OpenInEditor)
    async def _open_in_editor(self, event: PromptEditor.OpenInEditor) -> None:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w+", suffix=".txt", encoding="utf-8", delete=False) as f:
            f.write(event.text)
        try:
            with self.suspend():  # the editor runs in a thread: workers' messages are still read
                code = await asyncio.to_thread(subprocess.call, [*shlex.split(editor), f.name])
            if code == 0:
                text = Path(f.name).read_text(encoding="utf-8", errors="replace").rstrip("\n")
                self.query_one(PromptEditor).set_text(event.area_id, text)
            else:
                self.notify(f"{editor} exited with status {code}; the prompt is unchanged", severity="warning")
        except (OSError, SuspendNotSupported) as e:
            self.notify(f"cannot open {editor}: {e}", severity="error")
        finally:
            os.unlink(f.name)

    # the queue

    @on(QueueView.Command)
    async def _queue_command(self, event: QueueView.Command) -> None:
        engine, job_id = self.engine.calls, event.job_id
        try:
            if event.action == "pause":
                await (engine.resume() if self.engine.paused else engine.pause())
            elif event.action == "cancel_all":
                self.notify(f"cancelled {await engine.cancel_all()} job(s)")
            elif job_id is None:
                return
            elif event.action == "cancel":
                if not await engine.cancel(job_id):
                    self.notify(f"{job_id} is {self.board.jobs[job_id].status}; nothing to cancel", severity="warning")
            elif event.action in ("move_up", "move_down", "to_front"):
                await self._move(job_id, event.action)
            elif event.action in ("retry", "force_retry"):
                await engine.retry(job_id, force=event.action == "force_retry")
            elif event.action == "edit":
                await self._edit(job_id)
            elif event.action == "compare":
                self._compare_job(job_id)
        except (KeyError, ValueError, SpecError, RegistryError, DaemonError) as e:
            self.notify(str(e).strip("'\""), severity="warning")

    async def _move(self, job_id: str, action: str) -> None:
        queue = await self.engine.queue_order()  # the Board's may be a redraw behind
        if job_id not in queue:
            raise ValueError(f"{job_id} is {self.board.jobs[job_id].status}; only queued jobs move")
        here = queue.index(job_id)
        await self.engine.calls.move(job_id, {"move_up": here - 1, "move_down": here + 1, "to_front": 0}[action])

    async def _edit(self, job_id: str) -> None:
        """Load the job into the editor; a queued one leaves the queue until it is submitted again."""
        if job_id in await self.engine.queue_order():
            await self.engine.calls.cancel(job_id)
        self.query_one(PromptEditor).load(self.board.jobs[job_id].spec)

    # the gallery

    @on(Thumb.Opened)
    def _open_image(self, event: Thumb.Opened) -> None:
        self._open_large(event.job_id, event.image)

    @work(thread=True, exclusive=True, group="open-image", exit_on_error=False)
    def _open_large(self, job_id: str, index: int) -> None:
        row = self.board.jobs[job_id]
        image = next((i for i in row.images if i["image"] == index), None)
        if image is None:
            return
        try:
            picture = self._large(image["path"])
        except Exception as e:  # noqa: BLE001 - a missing or broken file must not end the app
            self.call_from_thread(self.notify, f"cannot open {image['path']}: {e}", severity="error")
            return
        stages = [(stage, self._stage_picture(stage["path"]))
                  for stage in sorted((s for s in row.stages if s["image"] == index), key=lambda s: s["stage"])]
        self.call_from_thread(self._show_large, job_id, image, picture, stages)

    def _large(self, path: str) -> Any:
        return thumbnail(path, LARGE_PX) if self.image_class else None

    def _stage_picture(self, path: str) -> Any:
        """A flow's stage image, larger; None (drawn blank) where it cannot be read: the job's own
        image is what the view is for."""
        try:
            return self._large(path)
        except Exception:  # noqa: BLE001 - gone, or on a daemon's machine only
            return None

    def _measured(self, event: Event) -> None:
        """An image's quality measures, into the image view if it shows that image."""
        from diffdeck.tui.screens.image_view import ImageScreen

        if isinstance(self.screen, ImageScreen):
            self.screen.measured(event.job, event.data["image"], event.data["quality"])

    def _show_large(self, job_id: str, image: dict[str, Any], picture: Any, stages: list[tuple[dict, Any]]) -> None:
        from diffdeck.tui.screens.image_view import ImageScreen

        def in_session(shown: dict[str, Any]) -> dict[str, Any]:  # the path as the rows name it
            return {**shown, "path": os.path.relpath(shown["path"], self.session.folder)}

        screen = ImageScreen(job_id, self.board.jobs[job_id].spec, in_session(image), picture, self.image_class,
                             [(in_session(stage), stage_picture) for stage, stage_picture in stages])
        self.push_screen(screen, lambda choice: self._image_choice(job_id, image, choice))

    async def _image_choice(self, job_id: str, image: dict[str, Any], choice: str | None) -> None:
        spec = self.board.jobs[job_id].spec
        if choice == "requeue":  # this one image again, with its own seed
            await self._queue_again(lambda: again(spec, image["seed"]), f"{job_id} image {image['image']} again")
        elif choice == "promote":
            await self._promote(job_id, image["image"])
        elif choice == "copy_prompt":
            self.copy_to_clipboard(spec["prompt"])
            self.notify("prompt copied (OSC 52: the terminal must allow clipboard access)")
        elif choice == "pin":
            self.pinned = [*self.pinned[-1:], (job_id, image["image"])]
            if len(self.pinned) == 2:
                from diffdeck.tui.compare_state import Comparison
                from diffdeck.tui.screens.compare import CompareScreen

                self.push_screen(CompareScreen(Comparison.of_pinned(self.session, self.board.jobs, self.pinned),
                                               self.image_class))
            else:
                self.notify(f"pinned {job_id} image {image['image']}; pin another to compare them")

    @on(Thumb.Promote)
    async def _promote_thumb(self, event: Thumb.Promote) -> None:
        await self._promote(event.job_id, event.image)

    async def _promote(self, job_id: str, index: int) -> None:
        """The image's prompt, seed and settings through the `final` route; the image is its init
        where final's flow starts with img2img."""
        final = self.engine.routes().get(PROMOTED_TO)
        if final is None:
            self.notify(f"no {PROMOTED_TO} route: define `routes: {PROMOTED_TO}:` in models.yaml", severity="warning")
            return
        row = self.board.jobs[job_id]
        image = next(i for i in row.images if i["image"] == index)
        init = self.engine.engine_path(image["path"]) if final["first_stage"] == "img2img" else None
        preview = self.engine.routes().get(row.spec.get("route"), {})

        def spec() -> JobSpec:
            filled = {**self.engine.describe(row.spec["model"])["defaults"], **preview.get("fields", {})}
            return promoted(row.spec, image["seed"], init, filled)

        await self._queue_again(spec, f"{job_id} image {index} through {PROMOTED_TO}")

    async def _queue_again(self, spec: Callable[[], JobSpec], what: str) -> None:
        """Queue one image again (`spec` builds its job); `what`: it, in words, for the toast."""
        try:
            queued = await self.engine.calls.submit(spec())
        except (SpecError, RegistryError, DeviceError, DaemonError) as e:
            self.notify(str(e), severity="error")
            return
        self.notify(f"{queued.id}: {what}, seed {queued.spec['seeds'][0]}")

    # A/B sets and grids

    def action_compare(self) -> None:
        set_id = self.board.newest_set()
        if set_id is None:
            self.notify("no A/B set or grid yet: ctrl+t in the prompt editor takes variants, ctrl+g makes a grid",
                        severity="warning")
            return
        self._open_set(set_id)

    @on(Thumb.Compare)
    def _compare_thumb(self, event: Thumb.Compare) -> None:
        self._compare_job(event.job_id)

    def _compare_job(self, job_id: str) -> None:
        set_id = self.board.variant_of.get(job_id, (None,))[0]
        if set_id is None:
            self.notify(f"{job_id} is not in an A/B set or grid; pin two images (a) to compare them",
                        severity="warning")
            return
        self._open_set(set_id)

    def _open_set(self, set_id: str) -> None:
        if set_id not in self.session.sets:
            self.notify(f"{set_id} is not recorded yet; try again in a moment", severity="warning")
            return
        from diffdeck.tui.compare_state import Comparison
        from diffdeck.tui.screens.compare import CompareScreen
        from diffdeck.tui.screens.grid_view import GridView

        comparison = Comparison.of_set(self.session, self.board.jobs, set_id)
        grid = self.session.sets[set_id]["kind"] == "grid"
        self.push_screen(GridView(comparison, self.image_class) if grid else CompareScreen(comparison, self.image_class))

    def on_grid_view_compare_cells(self, event: GridView.CompareCells) -> None:
        from diffdeck.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(event.comparison, self.image_class))

    async def on_compare_screen_picked(self, event: CompareScreen.Picked) -> None:
        await self._say(self.engine.calls.pick(event.set_id, event.image, event.left, event.right, event.winner))

    async def on_compare_screen_rated(self, event: CompareScreen.Rated) -> None:
        await self._say(self.engine.calls.rate(event.job_id, event.image, event.stars))

    async def _say(self, verdict: Awaitable[None]) -> None:
        try:
            await verdict
        except DaemonError as e:
            self.notify(f"not recorded: {e}", severity="error")
        except SessionWriteError:
            self._cannot_record()
            return
        await self._said_of_images()

    def _cannot_record(self) -> None:
        """The session's disk refused a write: nothing may render unrecorded, so the workbench
        stops its workers and ends; `diffdeck` prints why on the terminal."""
        self.exit(return_code=1)

    async def _said_of_images(self) -> None:
        self.marks = self.session.image_marks()
        await self._refresh_set_view()
        self.query_one(Gallery).show(self.board, self.marks)

    async def _refresh_set_view(self) -> None:
        """The compare view or grid view on top, drawn again from the session and the Board."""
        from diffdeck.tui.screens.compare import CompareScreen
        from diffdeck.tui.screens.grid_view import GridView

        if isinstance(self.screen, CompareScreen):
            self.screen.refresh_view()
        elif isinstance(self.screen, GridView):
            await self.screen.show_page()

    def on_compare_screen_export(self, event: CompareScreen.Export) -> None:
        self._write_sheet(event.set_id)

    @work(thread=True, group="contact-sheet", exit_on_error=False)
    def _write_sheet(self, set_id: str) -> None:
        from diffdeck.engines.sets.contact_sheet import SheetError, contact_sheet  # PIL's drawing: not at start

        try:
            paths = contact_sheet(self.session, set_id)
        except (OSError, SheetError) as e:
            self.call_from_thread(self.notify, f"no contact sheet for {set_id}: {e}", severity="error")
            return
        self.call_from_thread(self.notify, "contact sheet: " + ", ".join(str(p) for p in paths), timeout=10)

    # keys, help, palette

    def action_focus(self, widget_id: str) -> None:
        self.query_one(f"#{widget_id}").focus()

    def action_focus_gallery(self) -> None:
        newest = self.query_one(Gallery).newest()
        if newest is not None:
            newest.focus()

    def action_help(self) -> None:
        from diffdeck.tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(list(self.key_rows())))

    def key_rows(self) -> Iterable[tuple[str, str, str, str]]:
        from diffdeck.tui.screens.compare import CompareScreen
        from diffdeck.tui.screens.grid_dialog import GridDialog
        from diffdeck.tui.screens.grid_view import GridView
        from diffdeck.tui.screens.image_view import ImageScreen

        keymap = self.config.keys
        for where, owner in (("everywhere", Workbench), ("prompt", PromptEditor), ("queue", QueueView),
                             ("gallery", Thumb), ("gallery", Gallery), ("image", ImageScreen), ("compare", CompareScreen),
                             ("grid", GridView), ("grid axes", GridDialog)):
            for binding in owner.BINDINGS:
                yield where, keymap.get(binding.id, binding.key), binding.description or binding.action, binding.id
        yield "everywhere", "ctrl+p", "Command palette", "command_palette"

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Keys", "Every key and its binding id (F1)", self.action_help)
        yield SystemCommand("Render", "Queue the prompt in the editor", self.query_one(PromptEditor).action_submit)
        yield SystemCommand("Preview", "Queue the prompt through the preview route (ctrl+r)",
                            self.query_one(PromptEditor).action_preview)
        yield SystemCommand("A/B: take a variant", "The editor's settings become a variant (ctrl+t)",
                            self.query_one(PromptEditor).action_add_variant)
        yield SystemCommand("Grid", "Axes over the editor's settings (ctrl+g)", self.query_one(PromptEditor).action_grid)
        yield SystemCommand("Compare", "The newest A/B set or grid (F5)", self.action_compare)
        yield SystemCommand("Pause or resume the queue", "After the running job",
                            lambda: self.post_message(QueueView.Command("pause", None)))
        yield SystemCommand("Cancel all", "Every queued and running job",
                            lambda: self.post_message(QueueView.Command("cancel_all", None)))
        for theme in self.themes:
            yield SystemCommand(f"Theme: {theme.name}", "Switch the colour theme (saved in config.yaml)",
                                lambda name=theme.name: setattr(self, "theme", name))

    def watch_theme(self, theme: str) -> None:
        """A theme chosen here (the palette) is kept for next time, in config.yaml."""
        if theme == self.config.theme or self.config.file is None:
            return
        self.config.theme = theme
        try:
            save_setting(self.config.file, "theme", theme)
        except (ConfigError, OSError) as e:
            self.notify(f"theme {theme} not saved: {e}", severity="warning")
