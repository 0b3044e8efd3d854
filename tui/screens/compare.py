"""A | B: two variants side by side at one image index, their parameters (what differs
highlighted, what is equal dimmed), what each cost and measures, and how far apart the images
are (PSNR, perceptual-hash distance, SSIM). The user picks a winner or rates an image; the
screen posts what was said and the app records it.
"""

from __future__ import annotations

import math
from typing import Any

from diffdeck.engines.record.session import TIE
from diffdeck.tui.compare_state import LEFT, RIGHT, Comparison, Side
from diffdeck.tui.images import thumbnail
from diffdeck.tui.plain import plain
from diffdeck.tui.widgets.footer import Footer
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

LARGE_PX = 512


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Close", id="close_compare"),
        Binding("a", "pick('left')", "Left wins", id="pick_left"),
        Binding("b", "pick('right')", "Right wins", id="pick_right"),
        Binding("t", "pick('tie')", "Tie", id="pick_tie"),
        Binding("backspace", "pick('none')", "Unpick", id="unpick", show=False),
        Binding("n", "image(1)", "Next image", id="next_pair"),
        Binding("p", "image(-1)", "Previous", id="previous_pair"),
        Binding("v", "variant(1, 1)", "Right: next variant", id="next_right_variant"),
        Binding("V", "variant(0, 1)", "Left: next variant", id="next_left_variant"),
        Binding("w", "swap", "Swap sides", id="swap_sides", show=False),
        Binding("tab", "side", "Rate other side", id="rate_side"),
        *(Binding(str(n), f"rate({n})", "Rate 1-5 (0 clears)" if n == 1 else "", id=f"rate_{n}", show=n == 1)
          for n in range(6)),
        Binding("s", "export", "Contact sheet", id="export_sheet"),
    ]

    class Picked(Message):
        def __init__(self, set_id: str, image: int, left: str, right: str, winner: str | None):
            super().__init__()
            self.set_id, self.image, self.left, self.right, self.winner = set_id, image, left, right, winner

    class Rated(Message):
        def __init__(self, job_id: str, image: int, stars: int):
            super().__init__()
            self.job_id, self.image, self.stars = job_id, image, stars

    class Export(Message):
        def __init__(self, set_id: str):
            super().__init__()
            self.set_id = set_id

    class Decoded(Message):
        def __init__(self, which: int, path: str, picture: Any):
            super().__init__()
            self.which, self.path, self.picture = which, path, picture

    class Measured(Message):
        def __init__(self, paths: tuple[str, str], text: str):
            super().__init__()
            self.paths, self.text = paths, text

    def __init__(self, comparison: Comparison, image_class: Any):
        super().__init__()
        self.comparison, self.image_class = comparison, image_class
        self.rating_side = LEFT
        self._drawn: list[str | None] = [None, None]  # the image path each side shows or is decoding
        self._differences: dict[tuple[str, str], str] = {}  # each pair's, measured once
        self._measuring: tuple[str, str] | None = None  # the pair being measured

    def compose(self) -> ComposeResult:
        yield Static(id="compare-title")
        with Horizontal(id="sides"):
            for which in (LEFT, RIGHT):
                with Vertical(classes="side", id=f"side-{which}"):
                    yield Static(classes="side-label")
                    if self.image_class:
                        yield self.image_class(classes="side-image")
                    else:
                        yield Static(classes="side-image")
                    yield Static(classes="side-caption")
        yield Static(id="measures")
        table = DataTable(cursor_type="none", id="compare-table")
        table.add_columns("", "left", "right")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        """Redraw from the comparison and the session (after a pick, a rating, a new image)."""
        c = self.comparison
        sides = [c.side(LEFT), c.side(RIGHT)]
        where = f"{c.set_id} · {c.kind}" if c.set_id else "pinned images"
        pair = f" · image {c.index + 1}/{c.count}" if c.set_id else ""
        self.query_one("#compare-title", Static).update(
            plain(f"{where}{pair} · {sides[0].label} | {sides[1].label} · {c.wins_text()}"))
        winner = c.pick()
        for which, side in enumerate(sides):
            panel = self.query_one(f"#side-{which}")
            panel.set_class(which == self.rating_side, "-rating")
            panel.set_class(winner == side.job, "-winner")
            changes = "" if c.set_id is None else _changes(c, which)
            panel.query_one(".side-label", Static).update(plain(f"{side.label}{changes}"))
            panel.query_one(".side-caption", Static).update(plain(_caption(side, winner)))
            self._show_image(which, side)
        table = self.query_one(DataTable)
        table.clear()
        for name, left, right, differs in c.parameter_rows():
            style = "bold $accent" if differs else "dim"
            table.add_row(plain(name, style="dim"), *(plain(v, style=_rich(style, self)) for v in (left, right)))
        self._show_difference(sides)

    def _show_image(self, which: int, side: Side) -> None:
        widget = self.query_one(f"#side-{which} .side-image")
        path = side.image["path"] if side.image else None
        if path == self._drawn[which]:
            return  # a pick or a rating: the picture is the same, do not send it again
        self._drawn[which] = path
        if side.image is None:
            if self.image_class:
                widget.image = None
            else:
                widget.update(plain(f"not rendered ({side.status})"))
            return
        if self.image_class:
            self._decode(which, side.image["path"])
        else:
            widget.update(plain(side.image["path"]))

    @work(thread=True, group="compare-decode", exit_on_error=False)
    def _decode(self, which: int, path: str) -> None:
        try:
            self.post_message(self.Decoded(which, path, thumbnail(path, LARGE_PX)))
        except Exception:  # noqa: BLE001 - a missing file shows as an empty side
            pass

    @on(Decoded)
    def _decoded(self, event: Decoded) -> None:
        if self._drawn[event.which] == event.path:  # not stale
            self.query_one(f"#side-{event.which} .side-image").image = event.picture

    def _show_difference(self, sides: list[Side]) -> None:
        """How far apart the two images are: measured once a pair, in a thread (the pair left
        behind stops measuring), its SSIM the session's where it recorded it between them."""
        paths = tuple(side.image["path"] if side.image else "" for side in sides)
        known = self._differences.get(paths) if all(paths) else "difference: waiting for both images"
        if known is not None:
            self.query_one("#measures", Static).update(plain(known))
        elif paths != self._measuring:
            self._measuring = paths
            self.query_one("#measures", Static).update(plain("difference: measuring"))
            self._measure(paths, self.comparison.recorded_ssim())

    @work(thread=True, exclusive=True, group="compare-measure", exit_on_error=False)
    def _measure(self, paths: tuple[str, str], similarity: float | None) -> None:
        from diffdeck.engines.sets.quality import WINDOW, luma, scaled, ssim  # numpy and PIL: not at start
        from diffdeck.engines.sets.similarity import measure, not_comparable
        from PIL import Image

        worker = get_current_worker()
        try:
            with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
                if why := not_comparable(a, b):
                    self.post_message(self.Measured(paths, f"difference: {why}"))
                    return
                db, distance = measure(a, b)
                if similarity is None and not worker.is_cancelled:
                    sa, sb = scaled(a), scaled(b)  # measured as the recorder measures: over 2048 a side, scaled
                    similarity = ssim(luma(sa), luma(sb)) if min(sa.size) >= WINDOW else None
        except Exception as e:  # noqa: BLE001 - a file gone, not an image, too large to decode: said, not raised
            self.post_message(self.Measured(paths, f"difference: cannot read an image ({type(e).__name__}: {e})"))
            return
        if worker.is_cancelled:
            return  # paged away: measured again if it comes back
        psnr = "identical pixels" if math.isinf(db) else f"PSNR {db:.2f} dB"
        structure = "" if similarity is None else f" · SSIM {similarity:.4f}"
        self.post_message(self.Measured(paths, f"difference: {psnr} · perceptual-hash distance {distance}/64 bits"
                                               f"{structure}"))

    @on(Measured)
    def _measured(self, event: Measured) -> None:
        self._differences[event.paths] = event.text
        if self._measuring == event.paths:
            self._measuring = None
        if event.paths == tuple(path or "" for path in self._drawn):  # not a pair already left behind
            self.query_one("#measures", Static).update(plain(event.text))

    # actions

    def action_pick(self, who: str) -> None:
        c = self.comparison
        if c.set_id is None:
            self.notify("picks belong to A/B sets and grids; rate pinned images with 1-5", severity="warning")
            return
        left, right = c.side(LEFT), c.side(RIGHT)
        winner = {"left": left.job, "right": right.job, "tie": TIE, "none": None}[who]
        self.post_message(self.Picked(c.set_id, c.index, left.job, right.job, winner))

    def action_rate(self, stars: int) -> None:
        side = self.comparison.side(self.rating_side)
        if side.image is None:
            self.notify(f"{side.label} has no image {self.comparison.index} to rate yet", severity="warning")
            return
        self.post_message(self.Rated(side.job, side.index, stars))

    def action_image(self, step: int) -> None:
        self.comparison.step_image(step)
        self.refresh_view()

    def action_variant(self, which: int, step: int) -> None:
        if len(self.comparison.variants) > 2:
            self.comparison.step_variant(which, step)
            self.refresh_view()

    def action_swap(self) -> None:
        self.comparison.swap()
        self.refresh_view()

    def action_side(self) -> None:
        self.rating_side = 1 - self.rating_side
        self.refresh_view()

    def action_export(self) -> None:
        if self.comparison.set_id is None:
            self.notify("a contact sheet is made of an A/B set or a grid", severity="warning")
            return
        self.post_message(self.Export(self.comparison.set_id))


def _changes(c: Comparison, which: int) -> str:
    variant = c.variants[c.chosen[which]]
    changes = ", ".join(f"{k}={v}" for k, v in variant.get("changes", {}).items())
    return f" · {changes}" if changes and c.kind == "A/B" else ""


def _caption(side: Side, winner: str | None) -> str:
    parts = [f"{side.job} image {side.index}" if side.image else f"{side.job}: {side.status}"]
    if side.rating:
        parts.append("★" * side.rating)
    if winner == side.job:
        parts.append("WINNER")
    elif winner == TIE:
        parts.append("tie")
    return " · ".join(parts)


def _rich(style: str, screen: Screen) -> str:
    """A theme variable in a Rich style, resolved against the app's current theme."""
    accent = screen.app.theme_variables.get("accent", "yellow")
    return style.replace("$accent", accent)
