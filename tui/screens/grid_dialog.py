"""Define a grid over the prompt editor's settings: up to three axes, the number of jobs shown as
they are typed, and a second enter asked for a large grid. Posts the planned set; the app queues
it, or hands back why it could not."""

from __future__ import annotations

from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.sets.variants import AXES, AXIS_FIELDS, VariantSet, plan_grid
from diffdeck.tui.plain import plain
from diffdeck.tui.widgets.prompt_editor import CostNote
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Static

PLACEHOLDERS = {"x": "x: steps=4, 8, 16   or   steps=10..30 step 5",
                "y": "y: model=demo, other   or   cat -> dog, fox",
                "page": "page (optional): cfg=5, 7"}


class GridDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="close_grid_dialog")]
    AUTO_FOCUS = "#axis-x"  # what is typed right after ctrl+g is the x axis

    class Queue(Message):
        def __init__(self, dialog: "GridDialog", variants: VariantSet):
            super().__init__()
            self.dialog, self.variants = dialog, variants

    def __init__(self, base: JobSpec, cost_note: CostNote | None = None):
        """`cost_note`: what jobs would cost on hosted models, in words, shown beside their number."""
        super().__init__()
        self.base, self.cost_note = base, cost_note
        self.plan: VariantSet | None = None
        self.confirmed = False

    def compose(self) -> ComposeResult:
        with Vertical(id="grid-dialog"):
            yield Static(plain(f"grid over: {self.base.prompt[:60]!r} on {self.base.model} · fields: "
                               f"{', '.join(AXIS_FIELDS)}"), id="grid-base")
            for axis in AXES:
                yield Input(placeholder=PLACEHOLDERS[axis], id=f"axis-{axis}")
            yield Static("give at least the x axis", id="grid-count")

    def refused(self, reason: str) -> None:
        """The app could not queue the set (a model that is not there, say)."""
        self.plan, self.confirmed = None, False
        self._say(reason, error=True)

    @on(Input.Changed)
    def _replan(self) -> None:
        self.confirmed = False
        axes = {axis: self.query_one(f"#axis-{axis}", Input).value for axis in AXES}
        try:
            self.plan = plan_grid(self.base, axes)
        except SpecError as e:
            self.plan = None
            self._say(str(e), error=True)
            return
        self._say(self._jobs_text() + " · enter queues them")

    @on(Input.Submitted)
    def _queue(self) -> None:
        if self.plan is None:
            return
        if self.plan.needs_confirmation() and not self.confirmed:
            self.confirmed = True
            self._say(f"{self._jobs_text()} · that is a lot: enter again queues all "
                      f"{len(self.plan.variants)} jobs, escape cancels", error=True)
            return
        self.post_message(self.Queue(self, self.plan))
        self.plan = None  # one enter, one grid: a second before the dialog closes queues nothing

    def _jobs_text(self) -> str:
        """The plan's jobs and images, and what they would cost where a hosted model renders some."""
        cost = self.cost_note([variant.spec for variant in self.plan.variants]) if self.cost_note else None
        return self.plan.describe() + (f" · {cost}" if cost else "")

    def _say(self, text: str, error: bool = False) -> None:
        count = self.query_one("#grid-count", Static)
        count.update(plain(text))
        count.set_class(error, "-error")
