"""A one-line drop-down of fixed choices: the choice and ▼; enter, space, down or a click opens
its list under it (above it where there is no room below). There, up and down move, a typed
letter moves to the next choice it begins, enter picks, escape or a click beside it closes it.

Textual's Select is six widgets, its list (an OptionList, with its bindings and styles) built as
it mounts and restyled as its value is first set: the prompt editor's four were 9% of the work
(counted in instructions) before the workbench's first frame. A Picker is one widget, and builds
its list when it opens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Offset, Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import OptionList

Options = Sequence[tuple[Text, Hashable]]  # (label, value): labels as widgets show them (diffdeck.tui.plain)
ARROW = " ▼"
MAX_ROWS = 10  # a longer list scrolls


class Picker(Widget, can_focus=True):
    COMPONENT_CLASSES = {"picker--arrow"}
    DEFAULT_CSS = """
    Picker {
        width: 1fr;
        height: 1;
        padding: 0 1;
        background: $surface;
        pointer: pointer;
        &:focus { color: $accent; text-style: bold; background-tint: $foreground 5%; }
        &:disabled { color: $text-disabled; }
        .picker--arrow { color: $foreground 50%; }
        &:disabled > .picker--arrow { color: $text-disabled; }
    }
    """
    BINDINGS = [Binding("enter,space,down", "open", "Open", show=False)]

    value: reactive[Hashable] = reactive(None, init=False, layout=False)

    class Changed(Message):
        """The value changed (by the user or by code; not as the picker is built)."""

        def __init__(self, picker: Picker, value: Hashable):
            super().__init__()
            self.picker, self.value = picker, value

        @property
        def control(self) -> Picker:
            return self.picker

    def __init__(self, options: Options, value: Hashable, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.options = list(options)
        self.set_reactive(Picker.value, self.validate_value(value))

    @property
    def label(self) -> Text:
        return next(label for label, value in self.options if value == self.value)

    def set_options(self, options: Options) -> None:
        """New labels (or choices); the value stays where it is still a choice, else the first."""
        self.options = list(options)
        if self.value not in (value for _, value in self.options):
            self.value = self.options[0][1]
        self.refresh()

    def validate_value(self, value: Hashable) -> Hashable:
        if all(value != choice for _, choice in self.options):
            raise ValueError(f"{value!r} is not one of {self.id or 'the picker'}'s choices")
        return value

    def watch_value(self, value: Hashable) -> None:
        self.post_message(self.Changed(self, value))

    def render(self) -> Text:
        room = max(1, self.content_size.width - len(ARROW))
        label = self.label.copy()
        label.truncate(room, overflow="ellipsis", pad=True)
        return Text.assemble(label, (ARROW, self.get_component_rich_style("picker--arrow")), no_wrap=True, end="")

    def action_open(self) -> None:
        self.app.push_screen(PickerMenu(self.options, self.value, self.region), self._picked)

    def on_click(self, event: events.Click) -> None:
        event.stop()
        if not self.disabled:
            self.action_open()

    def _picked(self, value: Hashable | None) -> None:
        if value is not None:
            self.value = value
        self.focus()


class PickerMenu(ModalScreen[Hashable | None]):
    """A picker's list, over the screen just under the picker (above it where there is no room
    below); the screen beneath stays in sight. Dismissed with the value picked, or None."""

    DEFAULT_CSS = """
    PickerMenu {
        background: transparent;
        align: left top;
        OptionList {
            border: tall $border;
            background: $surface;
            padding: 0;
            text-wrap: nowrap;  /* a label a line, its start first: "imagen · hosted by im…" */
            text-overflow: ellipsis;
            & > .option-list--option { padding: 0 1; }
        }
    }
    """
    BINDINGS = [Binding("escape", "dismiss", "Close", show=False)]

    def __init__(self, options: Options, value: Hashable, under: Region):
        super().__init__()
        self.options, self.value, self.under = options, value, under
        self.opened_at: Size | None = None

    def compose(self) -> ComposeResult:
        yield OptionList(*(label for label, _ in self.options))

    def on_mount(self) -> None:
        menu = self.query_one(OptionList)
        wanted = min(len(self.options), MAX_ROWS) + 2  # the rows, and the border
        below, above = self.size.height - self.under.bottom, self.under.y
        if below >= wanted or below >= above:
            height, y = min(wanted, below), self.under.bottom
        else:
            height = min(wanted, above)
            y = above - height
        menu.styles.width = self.under.width
        menu.styles.max_height = height
        menu.styles.offset = Offset(self.under.x, y)
        menu.highlighted = next(i for i, (_, value) in enumerate(self.options) if value == self.value)
        menu.focus()
        self.opened_at = self.size

    def on_resize(self, event: events.Resize) -> None:
        """A new terminal size moves the picker from under its list: the list closes."""
        if self.opened_at is not None and event.size != self.opened_at:
            self.opened_at = None  # one close: the resize comes as more than one event
            self.dismiss(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.options[event.option_index][1])

    def on_key(self, event: events.Key) -> None:
        """A printable key moves to the next choice it begins (again: the one after)."""
        if not (event.character and event.character.isprintable() and event.character != " "):
            return
        menu = self.query_one(OptionList)
        start = (menu.highlighted or 0) + 1
        order = [*range(start, len(self.options)), *range(start)]
        for i in order:
            if self.options[i][0].plain.lower().startswith(event.character.lower()):
                menu.highlighted = i
                event.stop()
                return

    def on_click(self, event: events.Click) -> None:
        """A click beside the list closes it."""
        if self.get_widget_at(event.screen_x, event.screen_y)[0] is self:
            self.dismiss(None)
