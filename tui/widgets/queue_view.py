"""The render queue: every job of the session with its status, progress, rate, ETA and time.
Keys act on the job under the cursor; the view posts a Command and the app carries it out."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from ..board import JobRow

COLUMNS = ("job", "status", "progress", "time", "model", "prompt")  # what matters most first
WIDTHS = {"job": 4, "status": 9, "progress": 28, "time": 8, "model": 10, "prompt": 40}
BAR_WIDTH = 8


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
    ]

    class Command(Message):
        def __init__(self, action: str, job_id: str | None):
            super().__init__()
            self.action, self.job_id = action, job_id

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._shown: dict[str, tuple[str, ...]] = {}

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name, width=WIDTHS[name])

    def show(self, rows: list[JobRow], variant_of: dict[str, tuple[str, str]]) -> None:
        """Redraw what changed: cells of known rows, or the whole table when rows came or moved.
        A job of an A/B set or grid shows its set and variant before its prompt."""
        cells = {row.id: row_cells(row, variant_of.get(row.id)) for row in rows}
        if list(cells) != list(self._shown):
            selected = self.selected_job()
            self.clear()
            for job_id, values in cells.items():
                self.add_row(*values, key=job_id)
            if selected in cells:
                self.move_cursor(row=list(cells).index(selected))
        else:
            for job_id, values in cells.items():
                for column, old, new in zip(COLUMNS, self._shown[job_id], values):
                    if old != new:
                        self.update_cell(job_id, column, new)
        self._shown = cells

    def selected_job(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def action_command(self, action: str) -> None:
        self.post_message(self.Command(action, self.selected_job()))


def row_cells(row: JobRow, variant: tuple[str, str] | None) -> tuple[str, ...]:
    prompt = " ".join(row.spec.get("prompt", "").split())
    if variant:
        prompt = f"[{variant[0].removeprefix('set-')} {variant[1]}] {prompt}"
    return (row.id.removeprefix("job-"), row.status, progress(row), time_text(row), str(row.spec.get("model", "")),
            prompt)


def progress(row: JobRow) -> str:
    if row.status == "running" and row.steps_total:
        filled = round(BAR_WIDTH * row.steps_done / row.steps_total)
        rate = f" {row.it_s:.1f} it/s" if row.it_s else ""
        image = f" img {row.image + 1}/{row.count}" if row.count > 1 else ""
        return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {row.step}/{row.total}{image}{rate}"
    if row.status == "done":
        return f"{len(row.images)} image{'s' * (len(row.images) != 1)}"
    if row.status in ("failed", "held", "not resumed") and row.error:
        return row.error.splitlines()[0][:60]
    if row.status == "queued" and row.images:
        return f"{len(row.images)}/{row.count} kept"
    return ""


def time_text(row: JobRow) -> str:
    if row.status == "running":
        eta = row.eta_s()
        return f"ETA {eta:.0f}s" if eta is not None else "loading" if not row.step else ""
    render_s = row.render_s()
    return f"{render_s:.1f}s" if row.status == "done" and render_s is not None else ""
