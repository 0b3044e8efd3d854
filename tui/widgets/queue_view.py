"""The render queue: every job of the session with its status, progress, rate, ETA and time.
Keys act on the job under the cursor; the view posts a Command and the app carries it out.
Columns fit the width they are given (80 columns too): the prompt takes what the others leave,
and the progress cell says as much as its width holds."""

from __future__ import annotations

from diffdeck.engines.core.events import Status
from diffdeck.engines.core.text import counted
from diffdeck.engines.core.validation import is_finite_number
from diffdeck.tui.plain import plain
from diffdeck.tui.workbench_state import NOT_RESUMED, Board, JobRow
from textual.binding import Binding
from textual.geometry import Region, Spacing
from textual.message import Message
from textual.widgets import DataTable

COLUMNS = ("job", "status", "progress", "model", "prompt")  # what matters most first
CELL_PADDING = 2  # a DataTable cell's padding, both sides together
SCROLLBAR = 2
PROGRESS_WIDTHS = (16, 34)  # narrow (the bar, step and ETA), wide (image and it/s too)
MIN_PROMPT = 12
PROMPT_FIRST = 40  # the prompt's columns before the progress cell takes more than its narrow width
MAX_MODEL = 16


class QueueView(DataTable):
    BINDINGS = [
        Binding("x", "command('cancel')", "Cancel", id="cancel_job"),
        Binding("X", "command('cancel_all')", "Cancel all", id="cancel_all"),
        Binding("u", "command('move_up')", "Up", id="move_up"),
        Binding("d", "command('move_down')", "Down", id="move_down"),
        Binding("t", "command('to_front')", "To front", id="move_to_front"),
        Binding("p", "command('pause')", "Pause/resume", id="pause"),
        Binding("r", "command('retry')", "Retry", id="retry"),
        Binding("R", "command('force_retry')", "Retry held", id="force_retry", show=False),
        Binding("e", "command('edit')", "Edit+requeue", id="edit_requeue"),
        Binding("c", "command('compare')", "Compare set", id="compare_job"),
        Binding("right", "app.focus_gallery", "To the gallery", id="queue_to_gallery", show=False),  # beside it
    ]

    class Command(Message):
        def __init__(self, action: str, job_id: str | None):
            super().__init__()
            self.action, self.job_id = action, job_id

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._shown: dict[str, tuple[str, ...]] = {}
        self._widths: tuple[int, ...] = ()
        self._drawn: tuple[list[JobRow], dict[str, tuple[str, str]], dict[str, str]] = ([], {}, {})
        self._kept_in_view: tuple[str, int] | None = None  # the running job's id and row, once scrolled to

    def on_resize(self) -> None:
        self._kept_in_view = None  # the panels around moved: scroll to the running job again
        self.show(*self._drawn)

    def show(self, rows: list[JobRow], variant_of: dict[str, tuple[str, str]],
             devices: dict[str, str] | None = None) -> None:
        """Redraw what changed: cells of known rows, or the whole table when rows came or moved
        or the columns' widths changed. A job of an A/B set or grid shows its set and variant
        before its prompt; a running job, the device it runs on where there are several
        (`devices`: job id -> gpu1). Every cell is plain text: a prompt's brackets are not markup."""
        devices = devices or {}
        self._drawn = (rows, variant_of, devices)
        if not self.size.width:  # not laid out yet: drawn to its width when it is (on_resize)
            return
        widths = column_widths(rows, self.size.width - CELL_PADDING * len(COLUMNS) - SCROLLBAR, devices)
        cells = {row.id: row_cells(row, variant_of.get(row.id), widths[2], devices.get(row.id)) for row in rows}
        if widths != self._widths:
            self._widths, self._shown = widths, {}
            self.clear(columns=True)
            for name, width in zip(COLUMNS, widths):
                self.add_column(name, key=name, width=width)
        if list(cells) != list(self._shown):
            selected = self.selected_job()
            self.clear()
            for job_id, values in cells.items():
                self.add_row(*map(plain, values), key=job_id)
            if selected in cells:
                self.move_cursor(row=list(cells).index(selected))
        else:
            for job_id, values in cells.items():
                for column, old, new in zip(COLUMNS, self._shown[job_id], values):
                    if old != new:
                        self.update_cell(job_id, column, plain(new))
        self._shown = cells
        self._keep_running_in_view(rows)

    def _keep_running_in_view(self, rows: list[JobRow]) -> None:
        """Scroll the running job into view (the panels around may have moved it out), unless the
        user is moving through the queue."""
        running = next((row.id for row in rows if row.status == Status.RUNNING), None)
        place = (running, [row.id for row in rows].index(running)) if running else None
        if place is None or self.has_focus or place == self._kept_in_view:
            return  # scrolled there already: a wheel in the queue is not pulled back four times a second
        self._kept_in_view = place
        row = Region(0, self.header_height + place[1], 1, 1)
        self.call_after_refresh(self.scroll_to_region, row, spacing=Spacing(self.header_height, 0, 0, 0),
                                animate=False, force=True)  # once the new rows are laid out; under the header

    def selected_job(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def action_command(self, action: str) -> None:
        self.post_message(self.Command(action, self.selected_job()))


def column_widths(rows: list[JobRow], room: int, devices: dict[str, str] | None = None) -> tuple[int, ...]:
    """Job, status and model as wide as what they hold; the progress cell grows once the prompt
    has PROMPT_FIRST columns, or down to MIN_PROMPT for what a hosted job waits for; the prompt
    takes the rest."""
    job = max([3, *(len(row.id.removeprefix("job-")) for row in rows)])
    status = max([6, *(len(status_cell(row, (devices or {}).get(row.id))) for row in rows)])
    model = min(MAX_MODEL, max([5, *(len(model_cell(row)) for row in rows)]))
    fixed = job + status + model
    progress_width = max(PROGRESS_WIDTHS[0], min(PROGRESS_WIDTHS[1], room - fixed - PROMPT_FIRST))
    waiting = max([len(row.waiting) for row in rows if row.status == Status.RUNNING and row.waiting] or [0])
    if waiting > progress_width:  # its words are all a hosted job shows of its progress: the prompt gives way
        progress_width = max(progress_width, min(waiting, room - fixed - MIN_PROMPT))
    return job, status, progress_width, model, max(MIN_PROMPT, room - fixed - progress_width)


def row_cells(row: JobRow, variant: tuple[str, str] | None, progress_width: int,
              device: str | None = None) -> tuple[str, ...]:
    prompt = " ".join(row.spec.get("prompt", "").split())
    if variant:
        prompt = f"[{variant[0].removeprefix('set-')} {variant[1]}] {prompt}"
    return (row.id.removeprefix("job-"), status_cell(row, device), progress(row, progress_width), model_cell(row),
            prompt)


def status_cell(row: JobRow, device: str | None) -> str:
    """Its status; a running job's device in its place where there are several (as wide: on gpu1)."""
    return f"on {device}" if device and row.status == Status.RUNNING else row.status


def model_cell(row: JobRow) -> str:
    """The model, and the route (or, for a flow named without one, the flow) it was rendered through."""
    through = row.spec.get("route") or row.spec.get("flow")
    return f"{row.spec.get('model', '')}{f' › {through}' if through else ''}"


def progress(row: JobRow, width: int = PROGRESS_WIDTHS[1]) -> str:
    """What the job has done and has left, in `width` columns: the bar and step first, then
    the ETA, the image and the rate as they fit; a done job's images and render time. A hosted
    model's job has no steps: what it waits for, and for how long, in their place."""
    if row.status == Status.RUNNING and row.waiting:
        return fitted([waiting(row, width), f"img {row.image + 1}/{row.count}" if row.count > 1 else ""], width)
    if row.status == Status.RUNNING and row.steps_total:
        bar = 8 if width >= 24 else 4
        filled = round(bar * row.steps_done / row.steps_total)
        eta = row.eta_s()
        stages = row.progress.get("stages") or 1
        return fitted([f"{'█' * filled}{'░' * (bar - filled)} {row.step}/{row.total}",
                       f"stage {row.progress.get('stage', 0) + 1}/{stages}" if stages > 1 else "",
                       f"ETA {duration(eta)}" if eta is not None else "",
                       f"img {row.image + 1}/{row.count}" if row.count > 1 else "",
                       f"{row.it_s:.1f} it/s" if row.it_s else ""], width)
    if row.status == Status.RUNNING:
        return "loading" if not row.step else ""
    if row.status == Status.DONE:
        render_s = row.render_s()
        return fitted([counted(len(row.images), "image"),
                       f"{render_s:.1f}s" if render_s is not None else ""], width)
    if row.status in (Status.FAILED, Status.HELD, NOT_RESUMED) and row.error:
        return row.error.splitlines()[0][:60]
    if row.status == Status.QUEUED and row.images:
        return f"{len(row.images)}/{row.count} kept"
    return ""


def waiting(row: JobRow, width: int) -> str:
    """What a hosted job waits for, in its worker's words ("waiting for ideogram 12 s"); where they
    do not fit, how long the job has waited: "⋯ 12 s"."""
    elapsed = row.progress.get("elapsed_s")
    if len(row.waiting or "") <= width or not is_finite_number(elapsed):
        return row.waiting or ""
    return f"⋯ {elapsed:.0f} s"


def fitted(parts: list[str], width: int) -> str:
    """The first part, then each of the others that still fits."""
    text = parts[0]
    for part in filter(None, parts[1:]):
        if len(text) + 1 + len(part) <= width:
            text += f" {part}"
    return text


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h10m: short enough for a cell or a title."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def queue_title(board: Board) -> str:
    """The queue's border title: how many jobs wait, and when the last should be done (over every
    device, where there are several)."""
    waiting = len(board.queue) + len(board.running())
    if not waiting:
        return "queue"
    seconds, unmeasured = board.queue_eta()
    eta = f"ETA {duration(seconds)}" if not unmeasured else \
        f"ETA {duration(seconds)} + {unmeasured} not yet measured" if seconds else "ETA not measured yet"
    over = f" on {len(board.devices)} GPUs" if board.several_devices else ""
    return f"queue · {waiting} to go · {eta}{over}"
