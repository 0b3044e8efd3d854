"""The prompt editor: prompt, negative prompt and the job's settings. It reads what the user
typed into a JobSpec and posts it; the app queues it, and tells the editor which field is wrong
when a value cannot be used."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from diffdeck.engines.core.spec import DEFAULT_SCHEDULER, SCHEDULERS, SEED_RANGE, JobSpec, SpecError, parse_size
from diffdeck.engines.core.text import visible
from diffdeck.engines.sets.variants import VARIANT_FIELDS
from diffdeck.tui.plain import plain
from diffdeck.tui.widgets.picker import Picker
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static, TextArea

SEED_MODES = (("random seed", "random"), ("fixed seed", "fixed"), ("seed +count", "increment"))
NO_ROUTE = "-"  # the route picker's "none": the model picked beside it, one pass
# JobSpec fields that have no widget of their own, and the widget that shows them
FIELD_WIDGET = {"width": "size", "height": "size", "seeds": "seed"}
NOT_SENT = ("#steps", "#guidance", "#scheduler")  # what a hosted model's provider is never sent
CostNote = Callable[[list[JobSpec]], str | None]  # what jobs would cost, in words (the engine's cost_note)


class PromptArea(TextArea):
    """A multi-line prompt whose up and down keys walk the history from its first and last line."""

    def get_line(self, line_index: int) -> Text:
        """The line as it is, each control character drawn as a character of its own (ESC as ␛),
        in its place: one loaded from a session or a PNG is edited as it is, never sent to the
        terminal raw. Tabs stay: the text area lays them out itself."""
        parts = self.document.get_line(line_index).split("\t")
        return Text("\t".join(visible(part, one_for_one=True) for part in parts), end="", no_wrap=True)

    class HistoryStep(Message):
        def __init__(self, area: "PromptArea", step: int):
            super().__init__()
            self.area, self.step = area, step

    def action_cursor_up(self, select: bool = False) -> None:
        if self.cursor_location[0] == 0 and not select:
            self.post_message(self.HistoryStep(self, -1))
        else:
            super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if self.cursor_location[0] == self.document.line_count - 1 and not select:
            self.post_message(self.HistoryStep(self, +1))
        else:
            super().action_cursor_down(select)


class PromptEditor(Vertical):
    BINDINGS = [
        Binding("ctrl+j", "submit", "Render", id="submit", priority=True),
        Binding("alt+enter", "submit", "Render", id="submit_alt", show=False, priority=True),
        Binding("ctrl+o", "open_editor", "$EDITOR", id="open_editor"),
        Binding("ctrl+t", "add_variant", "A/B", id="add_variant"),
        Binding("ctrl+g", "grid", "Grid", id="grid"),
        Binding("ctrl+r", "preview", "Preview", id="render_preview"),
        Binding("escape", "drop_variants", "Drop A/B", id="drop_variants", show=False),
    ]

    class Submitted(Message):
        def __init__(self, spec: JobSpec):
            super().__init__()
            self.spec = spec

    class VariantsSubmitted(Message):
        """A/B: the variants taken with ctrl+t, then the fields as they are now."""

        def __init__(self, specs: list[JobSpec]):
            super().__init__()
            self.specs = specs

    class GridRequested(Message):
        """Open the grid dialog over these settings."""

        def __init__(self, spec: JobSpec):
            super().__init__()
            self.spec = spec

    class OpenInEditor(Message):
        """Edit this text in $EDITOR (the app suspends itself for it)."""

        def __init__(self, area_id: str, text: str):
            super().__init__()
            self.area_id, self.text = area_id, text

    class ModelChanged(Message):
        def __init__(self, model: str):
            super().__init__()
            self.model = model

    def __init__(self, models: list[str], model: str, history: list[str] | None = None,
                 routes: dict[str, str] | None = None, cost_note: CostNote | None = None, **kwargs: Any):
        """`history`: prompts queued before, oldest first (up on the first line walks back through them).
        `routes`: route name -> what it renders, in words (none: no route picker). `cost_note`: what
        jobs would cost on hosted models, in words (None: nothing), shown as an A/B set is taken."""
        super().__init__(**kwargs)
        self.models, self.initial_model, self.routes = models, model, dict(routes or {})
        self.cost_note = cost_note
        self.history: list[str] = list(history or [])
        self._history_at = len(self.history)
        self._draft = ""
        self.variants: list[JobSpec] = []  # A/B: the variants taken so far; the fields edit the next

    def compose(self) -> ComposeResult:
        yield PromptArea(id="prompt", soft_wrap=True, show_line_numbers=False, placeholder="prompt")
        yield PromptArea(id="negative_prompt", soft_wrap=True, show_line_numbers=False,
                         placeholder="negative prompt")
        with Horizontal(classes="fields"):
            yield Picker([(plain(m), m) for m in self.models], self.initial_model, id="model")
            route = Picker([(plain("no route"), NO_ROUTE), *((plain(r), r) for r in self.routes)], NO_ROUTE, id="route")
            route.display = bool(self.routes)
            yield route
        with Horizontal(classes="fields"):
            yield Picker([(plain(label), mode) for label, mode in SEED_MODES], "random", id="seed_mode")
            yield Input(placeholder="seed", id="seed", restrict=r"\d*")
        with Horizontal(classes="fields"):
            yield Label("steps")
            yield Input(id="steps", restrict=r"\d*")
            yield Label("cfg")
            yield Input(id="guidance", restrict=r"[\d.]*")
            yield Label("size")
            yield Input(id="size", restrict=r"[\dxX]*")
            yield Label("n")
            yield Input(value="1", id="count", restrict=r"\d*")
        with Horizontal(classes="fields"):
            yield Label("scheduler")
            yield Picker([(plain(s), s) for s in (DEFAULT_SCHEDULER, *SCHEDULERS)], DEFAULT_SCHEDULER, id="scheduler")
        yield Static(id="variants")
        yield Static(id="problem")

    # what the app calls

    def show_models(self, labels: dict[str, str]) -> None:
        """Relabel the model picker (name -> label, saying which are warm); keeps the choice."""
        self.query_one("#model", Picker).set_options([(plain(labels.get(m, m)), m) for m in self.models])

    def show_model(self, about: dict[str, Any]) -> None:
        """The model's defaults as placeholders (an empty field means 'the model's'), an example
        prompt in the empty prompt, and what the model is as the picker's tooltip (`about`: the
        engine's `describe`). A hosted model is sent no steps, guidance or scheduler: those fields
        are disabled, and left out of its jobs."""
        defaults, example, description = about["defaults"], about["example"], model_description(about)
        self.query_one("#prompt", PromptArea).placeholder = plain(f"prompt, for example: {example}" if example else "prompt")
        self.query_one("#model", Picker).tooltip = plain(description) if description else None
        for widget in self.query(", ".join(NOT_SENT)):
            widget.disabled = bool(about.get("hosted"))
        self.query_one("#steps", Input).placeholder = str(defaults.get("steps", ""))
        self.query_one("#guidance", Input).placeholder = str(defaults.get("guidance", ""))
        if defaults.get("width"):
            self.query_one("#size", Input).placeholder = f"{defaults['width']}x{defaults['height']}"

    def mark_invalid(self, error: SpecError) -> None:
        widget_id = FIELD_WIDGET.get(error.field, error.field)
        for widget in self.query(f"#{widget_id}"):
            widget.add_class("-invalid")
            widget.focus()
        self.query_one("#problem", Static).update(plain(error))
        self.query_one("#problem").add_class("-shown")

    def accepted(self, spec: JobSpec) -> None:
        """The job (or A/B set) was queued: remember the prompt, step the seed if asked to,
        and leave A/B."""
        if not self.history or self.history[-1] != spec.prompt:
            self.history.append(spec.prompt)
        self._history_at = len(self.history)
        if self.query_one("#seed_mode", Picker).value == "increment":
            self.query_one("#seed", Input).value = str((spec.seeds[-1] + 1) % SEED_RANGE)
        self._clear_marks()
        self.action_drop_variants()

    def load(self, spec: dict[str, Any]) -> None:
        """Fill the editor from a job's spec, to edit it and queue it again."""
        self.query_one("#prompt", TextArea).text = spec.get("prompt", "")
        self.query_one("#negative_prompt", TextArea).text = spec.get("negative_prompt", "")
        if spec.get("model") in self.models:
            self.query_one("#model", Picker).value = spec["model"]
        self.query_one("#route", Picker).value = spec["route"] if spec.get("route") in self.routes else NO_ROUTE
        self.query_one("#seed_mode", Picker).value = "fixed"
        for name in ("seed", "steps", "guidance", "count"):
            value = spec.get(name)
            self.query_one(f"#{name}", Input).value = "" if value is None else str(value)
        if spec.get("width"):
            self.query_one("#size", Input).value = f"{spec['width']}x{spec['height']}"
        if spec.get("scheduler") in (DEFAULT_SCHEDULER, *SCHEDULERS):
            self.query_one("#scheduler", Picker).value = spec["scheduler"]
        self.query_one("#prompt", TextArea).focus()

    def set_text(self, area_id: str, text: str) -> None:
        self.query_one(f"#{area_id}", TextArea).text = text

    # reading the fields

    def read_spec(self) -> JobSpec:
        """The spec the fields describe, validated. Raises SpecError naming the field."""
        value = {w.id: "" if w.disabled else w.value.strip() for w in self.query(Input)}
        scheduler = self.query_one("#scheduler", Picker)
        width, height = parse_size(value["size"]) if value["size"] else (None, None)
        seed = None if self.query_one("#seed_mode", Picker).value == "random" else _number(int, "seed", value["seed"])
        if seed is None and self.query_one("#seed_mode", Picker).value != "random":
            raise SpecError("seed", "is empty; give a seed, or choose random seed")
        spec = JobSpec(
            prompt=self.query_one("#prompt", TextArea).text.strip(),
            negative_prompt=self.query_one("#negative_prompt", TextArea).text.strip(),
            model=str(self.query_one("#model", Picker).value),
            seed=seed,
            steps=_number(int, "steps", value["steps"]),
            guidance=_number(float, "guidance", value["guidance"]),
            width=width, height=height,
            scheduler=DEFAULT_SCHEDULER if scheduler.disabled else str(scheduler.value),
            count=_number(int, "count", value["count"]) or 1,
            route=None if self.query_one("#route", Picker).value == NO_ROUTE else str(self.query_one("#route", Picker).value),
        )
        spec.validate()
        return spec

    # handlers

    def action_submit(self) -> None:
        spec = self._read_or_mark()
        if spec is not None:
            self.post_message(self.VariantsSubmitted([*self.variants, spec]) if self.variants else self.Submitted(spec))

    def action_preview(self) -> None:
        """The prompt through the `preview` route, whatever the route picker says."""
        if "preview" not in self.routes:
            self.notify("no preview route: define `routes: preview:` in models.yaml (diffdeck flows lists them)",
                        severity="warning")
            return
        spec = self._read_or_mark()
        if spec is not None:
            self.post_message(self.Submitted(dataclasses.replace(spec, route="preview")))

    def action_add_variant(self) -> None:
        """Take the fields as a variant (the first is A); the fields go on as the next one."""
        spec = self._read_or_mark()
        if spec is None:
            return
        if self.variants and spec == self.variants[-1]:
            self.notify("change a field first: this variant is the same as the last", severity="warning")
            return
        self.variants.append(spec)
        self._show_variants()

    def action_drop_variants(self) -> None:
        if self.variants:
            self.variants = []
            self._show_variants()

    def action_grid(self) -> None:
        spec = self._read_or_mark()
        if spec is not None:
            self.post_message(self.GridRequested(spec))

    def _read_or_mark(self) -> JobSpec | None:
        self._clear_marks()
        try:
            return self.read_spec()
        except SpecError as e:
            self.mark_invalid(e)
            return None

    def _show_variants(self) -> None:
        """A/B: which variants are taken, and what the one being edited changes from A."""
        strip = self.query_one("#variants", Static)
        strip.set_class(bool(self.variants), "-shown")
        if not self.variants:
            strip.update("")
            return
        label = chr(ord("A") + len(self.variants))
        cost = None
        try:
            spec = self.read_spec()
            changed = [k for k in VARIANT_FIELDS if getattr(spec, k) != getattr(self.variants[0], k)]
            cost = self.cost_note([*self.variants, spec]) if self.cost_note else None
        except SpecError:
            changed = []
        taken = " ".join(chr(ord("A") + i) for i in range(len(self.variants)))
        strip.update(plain(f"A/B · taken: {taken} · editing {label}"
                           + (f", which changes {', '.join(changed)}" if changed else ": change what it should change")
                           + (f" · {len(self.variants) + 1} jobs, {cost}" if cost else "")
                           + " · ctrl+j queues all · ctrl+t takes another · esc drops"))

    def action_open_editor(self) -> None:
        area = self.focused_area()
        self.post_message(self.OpenInEditor(area.id, area.text))

    def focused_area(self) -> TextArea:
        focused = self.screen.focused
        return focused if isinstance(focused, PromptArea) else self.query_one("#prompt", TextArea)

    @on(PromptArea.HistoryStep)
    def _walk_history(self, event: PromptArea.HistoryStep) -> None:
        """Up from the newest entry keeps what was being typed; down past it brings that back."""
        at = max(0, min(len(self.history), self._history_at + event.step))
        if event.area.id != "prompt" or at == self._history_at:
            return
        if self._history_at == len(self.history):
            self._draft = event.area.text
        self._history_at = at
        event.area.text = self.history[at] if at < len(self.history) else self._draft

    @on(Picker.Changed, "#model")
    def _model_changed(self, event: Picker.Changed) -> None:
        self.post_message(self.ModelChanged(str(event.value)))

    @on(Picker.Changed, "#route")
    def _route_changed(self, event: Picker.Changed) -> None:
        """What the route renders, as the picker's tooltip."""
        event.picker.tooltip = plain(self.routes[event.value]) if event.value in self.routes else None

    @on(Input.Changed)
    @on(TextArea.Changed)
    @on(Picker.Changed)
    def _edited(self, event: Message) -> None:
        event.control.remove_class("-invalid")
        if self.variants:
            self._show_variants()

    def _clear_marks(self) -> None:
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        self.query_one("#problem", Static).update("")
        self.query_one("#problem").remove_class("-shown")


def _number(kind: type, name: str, text: str) -> Any:
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise SpecError(name, f"must be a number, got {text!r}") from None


def model_description(about: dict[str, Any]) -> str:
    """What the model picker's tooltip says of a model (`describe`'s answer): who renders a hosted
    one, then what its entry says."""
    hosted = about.get("hosted")
    by = f"hosted by {hosted['provider']} (model {hosted['model_id']}): each image is a paid request" if hosted else ""
    return " · ".join(filter(None, (by, about["description"])))
