"""A grid set as a grid: x values across, y values down, one page at a time; each cell shows its
first image, its rating and the picks it won. Enter compares a cell with its right neighbour."""

from __future__ import annotations

from typing import Any

from diffdeck.tui.compare_state import Comparison
from diffdeck.tui.images import thumbnail
from diffdeck.tui.plain import plain
from diffdeck.tui.screens.compare import CompareScreen
from diffdeck.tui.widgets.footer import Footer
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Label, Static


class Cell(Vertical, can_focus=True):
    def __init__(self, position: int, caption: str, image_class: Any):
        super().__init__(classes="cell")
        self.position, self.caption, self.image_class = position, caption, image_class

    def compose(self) -> ComposeResult:
        yield self.image_class() if self.image_class else Static("▒" * 64, classes="no-image")
        yield Label(plain(self.caption))


class GridView(Screen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Close", id="close_grid"),
        Binding("enter", "compare", "Compare with the next cell", id="compare_cell"),
        Binding("pagedown,]", "page(1)", "Next page", id="next_page"),
        Binding("pageup,[", "page(-1)", "Previous page", id="previous_page"),
        Binding("s", "export", "Contact sheet", id="export_grid_sheet"),
    ]

    class CompareCells(Message):
        def __init__(self, comparison: Comparison):
            super().__init__()
            self.comparison = comparison

    class Decoded(Message):
        def __init__(self, position: int, picture: Any):
            super().__init__()
            self.position, self.picture = position, picture

    def __init__(self, comparison: Comparison, image_class: Any):
        super().__init__()
        self.comparison, self.image_class = comparison, image_class
        axes = comparison.session.sets[comparison.set_id]["axes"]
        self.x_labels = axes[0]["labels"]
        self.y_labels = axes[1]["labels"] if len(axes) > 1 else [""]
        self.pages = axes[2]["labels"] if len(axes) > 2 else [""]
        self.axis_names = [a["name"] for a in axes]
        self.page = 0

    def compose(self) -> ComposeResult:
        yield Static(id="grid-title")
        yield Grid(id="grid-cells")
        yield Footer()

    async def on_mount(self) -> None:
        await self.show_page()

    async def on_screen_resume(self) -> None:
        await self.show_page()  # back from the compare view: picks and ratings may have changed

    async def show_page(self) -> None:
        """Draw the current page again (images that came, picks, ratings), keeping the focused cell."""
        c = self.comparison
        page = f" · page {self.page + 1}/{len(self.pages)}: {self.axis_names[2]}={self.pages[self.page]}" \
            if len(self.pages) > 1 else ""
        self.query_one("#grid-title", Static).update(plain(f"{c.set_id} · grid{page} · {c.wins_text()}"))
        focused = self.focused.position if isinstance(self.focused, Cell) else None
        grid = self.query_one("#grid-cells", Grid)
        await grid.remove_children()
        grid.styles.grid_size_columns = len(self.x_labels) + 1
        x_name = self.axis_names[0]
        widgets: list[Any] = [Label(""), *(Label(plain(f"{x_name}={x}"), classes="axis") for x in self.x_labels)]
        for y, y_label in enumerate(self.y_labels):
            y_text = f"{self.axis_names[1]}={y_label}" if len(self.axis_names) > 1 else ""
            widgets.append(Label(plain(y_text), classes="axis"))
            for x in range(len(self.x_labels)):
                position = self._position((x, y, self.page))
                widgets.append(self._cell(position) if position is not None else Label("—"))
        await grid.mount_all(widgets)
        cells = [w for w in widgets if isinstance(w, Cell)]
        if cells:
            next((cell for cell in cells if cell.position == focused), cells[0]).focus()

    def _position(self, cell: tuple[int, int, int]) -> int | None:
        """The variant at (x, y, page), as an index into the comparison's variants."""
        size = len(self.axis_names)
        return next((i for i, v in enumerate(self.comparison.variants) if tuple(v["cell"]) == cell[:size]), None)

    def _cell(self, position: int) -> Cell:
        c = self.comparison
        side = c.side_at(position)
        wins = sum(1 for p in c.session.sets[c.set_id]["picks"] if p["winner"] == side.job)
        caption = " ".join(filter(None, [side.job.removeprefix("job-"), "★" * side.rating,
                                         f"✓{wins}" if wins else "", "" if side.image else side.status]))
        if side.image and self.image_class:
            self._decode(position, side.image["path"])
        return Cell(position, caption, self.image_class)

    @work(thread=True, group="grid-decode", exit_on_error=False)
    def _decode(self, position: int, path: str) -> None:
        try:
            self.post_message(self.Decoded(position, thumbnail(path)))
        except Exception:  # noqa: BLE001 - a missing file leaves an empty cell
            pass

    @on(Decoded)
    def _decoded(self, event: Decoded) -> None:
        for cell in self.query(Cell):
            if cell.position == event.position and self.image_class:
                cell.query_one(self.image_class).image = event.picture

    async def action_page(self, step: int) -> None:
        if len(self.pages) > 1:
            self.page = (self.page + step) % len(self.pages)
            await self.show_page()

    def action_compare(self) -> None:
        focused = self.focused
        if not isinstance(focused, Cell):
            return
        cells = list(self.query(Cell))
        if len(cells) < 2:
            return
        neighbour = cells[(cells.index(focused) + 1) % len(cells)]
        comparison = Comparison(self.comparison.session, self.comparison.rows, self.comparison.set_id,
                                self.comparison.variants)
        comparison.chosen = [focused.position, neighbour.position]
        self.post_message(self.CompareCells(comparison))

    def action_export(self) -> None:
        self.post_message(CompareScreen.Export(self.comparison.set_id))
