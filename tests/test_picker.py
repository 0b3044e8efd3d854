"""The prompt editor's drop-downs (diffdeck.tui.widgets.picker), as a person uses them: keys and
clicks, and what the screen shows."""

import pytest
from diffdeck.tui.plain import plain
from diffdeck.tui.widgets.picker import Picker, PickerMenu
from helpers import screen_text
from textual.app import App, ComposeResult
from textual.widgets import Input, OptionList, Static

CHOICES = [(plain(name), name) for name in ("default", "euler", "euler_a", "heun", "ddim")]


class Pickers(App):
    CSS = ".spacer { height: 1fr; }"

    def __init__(self, at_bottom: bool = False, choices=CHOICES):
        super().__init__()
        self.at_bottom, self.choices, self.changes = at_bottom, choices, []

    def compose(self) -> ComposeResult:
        yield Input(id="before")
        if self.at_bottom:
            yield Static(classes="spacer")
        yield Picker(self.choices, self.choices[0][1], id="scheduler")

    def on_picker_changed(self, event: Picker.Changed) -> None:
        self.changes.append((event.control.id, event.value))


def lines(app: App) -> list[str]:
    return screen_text(app).splitlines()


async def test_enter_opens_the_list_under_the_picker_and_enter_picks():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        picker = app.query_one(Picker)
        assert lines(app)[picker.region.y].strip().startswith("default") and "▼" in lines(app)[picker.region.y]
        assert app.changes == [], "building the picker is no change"
        picker.focus()
        await pilot.press("enter")
        assert isinstance(app.screen, PickerMenu)
        shown = lines(app)
        assert [i for i, line in enumerate(shown) if "euler_a" in line] == [picker.region.y + 4], \
            "the list sits under the picker, its choices in order, the one picked highlighted"
        await pilot.press("down", "down", "enter")
        assert not isinstance(app.screen, PickerMenu) and app.focused is picker
        assert picker.value == "euler_a" and app.changes == [("scheduler", "euler_a")]
        assert lines(app)[picker.region.y].strip().startswith("euler_a")


async def test_a_typed_letter_moves_to_the_next_choice_it_begins_and_escape_changes_nothing():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        picker = app.query_one(Picker)
        picker.focus()
        await pilot.press("space", "e", "e", "enter")
        assert picker.value == "euler_a"
        await pilot.press("down", "h", "escape")
        assert not isinstance(app.screen, PickerMenu)
        assert picker.value == "euler_a" and app.changes == [("scheduler", "euler_a")]


async def test_a_click_opens_it_and_a_click_beside_the_list_closes_it():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.click(Picker)
        assert isinstance(app.screen, PickerMenu)
        await pilot.click(offset=(39, 0))
        assert not isinstance(app.screen, PickerMenu) and app.query_one(Picker).value == "default"


@pytest.mark.parametrize("choices", [CHOICES, [(plain(f"choice {i}"), i) for i in range(30)]])
async def test_at_the_bottom_of_the_screen_the_list_opens_above_on_the_screen(choices):
    app = Pickers(at_bottom=True, choices=choices)
    async with app.run_test(size=(40, 12)) as pilot:
        picker = app.query_one(Picker)
        assert picker.region.bottom == 12
        picker.focus()
        await pilot.press("enter")
        menu = app.screen.query_one(OptionList).region
        assert 0 <= menu.y and menu.bottom <= picker.region.y, (menu, picker.region)
        first = str(choices[0][0])
        assert any(line.strip("▊▎ ") == first for line in lines(app)[menu.y:menu.bottom]), "\n".join(lines(app))


async def test_new_labels_keep_the_choice_and_a_value_that_is_no_choice_is_refused():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        picker = app.query_one(Picker)
        picker.value = "heun"
        picker.set_options([(plain(f"{name} · warm"), name) for _, name in CHOICES])
        await pilot.pause()
        assert picker.value == "heun" and "heun · warm" in lines(app)[picker.region.y]
        picker.set_options(CHOICES[:2])
        assert picker.value == "default", "its choice gone, the first"
        try:
            picker.value = "no-such"
        except ValueError as e:
            assert "no-such" in str(e)
        else:
            raise AssertionError("an unknown value was taken")


async def test_a_disabled_picker_does_not_open():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        app.query_one(Picker).disabled = True
        await pilot.click(Picker)
        await pilot.press("tab", "enter")
        assert not isinstance(app.screen, PickerMenu)


async def test_the_list_closes_when_the_terminal_is_resized_and_the_focused_picker_is_marked():
    app = Pickers()
    async with app.run_test(size=(40, 12)) as pilot:
        picker = app.query_one(Picker)
        unfocused = picker.rich_style
        picker.focus()
        await pilot.pause()
        assert picker.rich_style != unfocused and picker.rich_style.bold, "the focused picker looks focused"
        await pilot.press("enter")
        assert isinstance(app.screen, PickerMenu)
        await pilot.resize_terminal(60, 16)
        assert not isinstance(app.screen, PickerMenu) and picker.value == "default" and app.focused is picker
