"""The footer: the keys the focus offers, and the command palette's at the right, in one line.

Textual's Footer is a widget per key, composed again each time the screen's bindings may have
changed: the workbench's twelve keys were 6% of the work (counted in instructions) before its
first frame. This one is one widget drawing what Textual's draws (its colours come from the same
theme variables), and draws it again when the keys change. A click on a key presses it, as in
Textual's; a disabled key is dim, and its click rings the bell. What it leaves out: a key's
tooltip, its look under the mouse, and scrolling to the keys that do not fit (F1 lists them all).
"""

from __future__ import annotations

from typing import NamedTuple

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget


class Key(NamedTuple):
    key: str
    display: str
    description: str
    enabled: bool


class Footer(Widget):
    COMPONENT_CLASSES = {"footer--key", "footer--description"}
    DEFAULT_CSS = """
    Footer {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        .footer--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .footer--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
    }
    """
    ALLOW_SELECT = False

    def __init__(self) -> None:
        super().__init__()
        self._spans: list[tuple[int, int, Key]] = []  # where each key was drawn: [start, end) columns

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, _screen: Screen) -> None:
        self.refresh()

    def keys(self) -> tuple[list[Key], Key | None]:
        """The keys to show, a key an action (its first binding, as Textual's footer picks), and
        the command palette's."""
        shown: dict[str, Key] = {}
        palette = None
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if binding.key == self.app.COMMAND_PALETTE_BINDING and self.app.ENABLE_COMMAND_PALETTE:
                palette = self._key(binding, enabled)
            elif binding.show and binding.action not in shown:
                shown[binding.action] = self._key(binding, enabled)
        return list(shown.values()), palette

    def _key(self, binding: Binding, enabled: bool) -> Key:
        return Key(binding.key, self.app.get_key_display(binding), binding.description, enabled)

    def render(self) -> Text:
        key_style = self.get_component_rich_style("footer--key", partial=True)
        description_style = self.get_component_rich_style("footer--description", partial=True)
        keys, palette = self.keys()
        right = Text()
        if palette is not None:
            right.append(palette.display, key_style)
            right.append(f" {palette.description}", description_style)
        width = self.content_size.width
        room = max(0, width - right.cell_len)
        left, self._spans = Text(), []
        for key in keys:
            drawn = Text.assemble((f" {key.display} ", key_style), (f"{key.description} ", description_style))
            if left.cell_len + drawn.cell_len > room:  # the keys that fit whole, a space before the palette's
                break
            if not key.enabled:
                drawn.stylize("dim")
            self._spans.append((left.cell_len, left.cell_len + drawn.cell_len, key))
            left.append_text(drawn)
        left.truncate(room, pad=True)
        if palette is not None:
            self._spans.append((room, width, palette))
        return Text.assemble(left, right, no_wrap=True, end="")

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                if key.enabled:
                    self.app.simulate_key(key.key)
                else:
                    self.app.bell()
                return
