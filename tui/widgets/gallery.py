"""Thumbnails of the session's images, newest last; the running job's latest step preview
stands in for the image it is making. Enter on a thumbnail opens it larger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffdeck.tui.images import decode_preview, thumbnail
from diffdeck.tui.plain import plain
from diffdeck.tui.workbench_state import Board
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Label, Static

if TYPE_CHECKING:
    from PIL import Image as PILImage

LIVE = -1  # the image index of the running job's live preview


class Thumb(Vertical, can_focus=True):
    BINDINGS = [Binding("enter", "open", "Open", id="open_image"),
                Binding("c", "compare", "Compare its set", id="compare_image"),
                Binding("f", "promote", "Final", id="promote_thumb")]

    class Opened(Message):
        def __init__(self, job_id: str, image: int):
            super().__init__()
            self.job_id, self.image = job_id, image

    class Compare(Message):
        def __init__(self, job_id: str):
            super().__init__()
            self.job_id = job_id

    class Promote(Message):
        """Render this image again through the `final` route."""

        def __init__(self, job_id: str, image: int):
            super().__init__()
            self.job_id, self.image = job_id, image

    def __init__(self, job_id: str, image: int, caption: str, image_class: Any, variant: str = ""):
        super().__init__(classes="thumb")
        self.job_id, self.image, self.caption, self.image_class = job_id, image, caption, image_class
        self.variant = variant  # its label in an A/B set or grid, last: a long one is cut
        self.said = ""  # what the user said of it (rating, picks won)

    def compose(self) -> ComposeResult:
        yield self.image_class() if self.image_class else Static("▒" * 64, classes="no-image")
        yield Label(plain(self._caption_text()))

    def _caption_text(self) -> str:
        return " ".join(filter(None, (self.caption, self.said, self.variant)))

    def show(self, picture: PILImage.Image) -> None:
        if self.image_class:
            self.query_one(self.image_class).image = picture

    def mark(self, text: str) -> None:
        """What the user said of it (rating, picks won), after the caption."""
        self.said = text
        for label in self.query(Label):  # none before it is composed: compose shows it then
            label.update(plain(self._caption_text()))

    def action_open(self) -> None:
        if self.image != LIVE:
            self.post_message(self.Opened(self.job_id, self.image))

    def action_compare(self) -> None:
        self.post_message(self.Compare(self.job_id))

    def action_promote(self) -> None:
        if self.image != LIVE:
            self.post_message(self.Promote(self.job_id, self.image))


class Gallery(VerticalScroll):
    """Arrow keys move between thumbnails as they are laid out; left from the first column goes
    back to the queue beside it."""

    BINDINGS = [Binding("left", "step(-1, 0)", "Image to the left (or the queue)", id="gallery_left", show=False),
                Binding("right", "step(1, 0)", "Image to the right", id="gallery_right", show=False),
                Binding("up", "step(0, -1)", "Image above", id="gallery_up", show=False),
                Binding("down", "step(0, 1)", "Image below", id="gallery_down", show=False)]

    class Decoded(Message):
        def __init__(self, key: tuple[str, int], picture: PILImage.Image):
            super().__init__()
            self.key, self.picture = key, picture

    def __init__(self, image_class: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.image_class = image_class
        self._thumbs: dict[tuple[str, int], Thumb] = {}
        self._preview_of: dict[str, bytes] = {}
        self._marks: dict[tuple[str, int], str] = {}

    def newest(self) -> Thumb | None:
        """The newest finished image's thumbnail (the live preview only when there is none)."""
        thumbs = list(self.query(Thumb))
        return next((t for t in reversed(thumbs) if t.image != LIVE), thumbs[-1] if thumbs else None)

    def action_step(self, across: int, down: int) -> None:
        thumbs = list(self.query(Thumb))
        if not isinstance(self.screen.focused, Thumb) or self.screen.focused not in thumbs:
            return
        columns = self.styles.grid_size_columns or 1
        here = thumbs.index(self.screen.focused)
        if across < 0 and here % columns == 0:
            self.app.action_focus("queue")
            return
        there = here + across + down * columns
        if 0 <= there < len(thumbs):
            thumbs[there].focus()

    def show(self, board: Board, marks: dict[tuple[str, int], str]) -> None:
        """`marks`: what the user said of an image, short (rating, picks won)."""
        for row, image in board.images():
            key = (row.id, image["image"])
            if key not in self._thumbs:
                variant = board.variant_of.get(row.id, ("", ""))[1]
                self._add(key, f"{row.id.removeprefix('job-')}·{image['image']}", variant)
                if self.image_class:
                    self._decode_file(key, image["path"])
            if marks.get(key, "") != self._marks.get(key, ""):
                self._thumbs[key].mark(marks.get(key, ""))
        self._marks = marks
        running = board.running()
        running_ids = {row.id for row in running}
        for key in [k for k in self._thumbs if k[1] == LIVE and k[0] not in running_ids]:
            self._thumbs.pop(key).remove()
            self._preview_of.pop(key[0], None)
        for row in running:  # one a device
            key = (row.id, LIVE)
            if key not in self._thumbs:
                self._add(key, f"{row.id.removeprefix('job-')} …")
            if row.preview and self.image_class and self._preview_of.get(row.id) is not row.preview:
                self._preview_of[row.id] = row.preview
                self._decode_preview(key, row.preview)

    def _add(self, key: tuple[str, int], caption: str, variant: str = "") -> None:
        thumb = self._thumbs[key] = Thumb(key[0], key[1], caption, self.image_class, variant)
        live = next((t for k, t in self._thumbs.items() if k[1] == LIVE and k != key), None)
        self.mount(thumb, before=live) if live else self.mount(thumb)

    @work(thread=True, group="thumbnails", exit_on_error=False)
    def _decode_file(self, key: tuple[str, int], path: str) -> None:
        try:
            self.post_message(self.Decoded(key, thumbnail(path)))
        except Exception:  # noqa: BLE001 - gone or broken: its thumbnail stays a placeholder
            pass

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def _decode_preview(self, key: tuple[str, int], data: bytes) -> None:
        try:
            self.post_message(self.Decoded(key, decode_preview(data)))
        except Exception:  # noqa: BLE001 - a bad preview is skipped; the next one comes soon
            pass

    @on(Decoded)
    def _decoded(self, event: Decoded) -> None:
        thumb = self._thumbs.get(event.key)
        if thumb is not None and thumb.is_mounted:
            thumb.show(event.picture)
