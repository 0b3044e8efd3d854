"""One image, larger, with every parameter it was made with and what it measures; re-queue it,
copy its prompt, pin it for the A/B view, or promote it through the `final` route. A flow's image
shows each stage's image too (`[` and `]`), with the stage's kind and timings."""

from __future__ import annotations

from typing import Any

from diffdeck.engines.core.events import render_parts, render_seconds
from diffdeck.engines.core.flows import loras_from
from diffdeck.tui.plain import plain
from diffdeck.tui.quality import quality_rows
from diffdeck.tui.widgets.footer import Footer
from diffdeck.tui.workbench_state import cost_text, hosted_record, reproducible
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static


class ImageScreen(ModalScreen[str | None]):
    """Dismissed with what the user chose: "requeue", "copy_prompt", "pin", "promote", or None."""

    BINDINGS = [
        Binding("escape,q", "dismiss(None)", "Close", id="close_image"),
        Binding("r", "requeue", "Re-queue", id="requeue_image"),
        Binding("c", "dismiss('copy_prompt')", "Copy prompt", id="copy_prompt"),
        Binding("a", "dismiss('pin')", "Pin for A/B", id="pin_image"),
        Binding("f", "dismiss('promote')", "Final", id="promote_image"),
        Binding("[", "stage(-1)", "Earlier stage", id="earlier_stage"),
        Binding("]", "stage(1)", "Later stage", id="later_stage"),
    ]
    AUTO_FOCUS = "#parameters"  # a long prompt scrolls

    def __init__(self, job_id: str, spec: dict[str, Any], image: dict[str, Any], picture: Any, image_class: Any,
                 stages: list[tuple[dict[str, Any], Any]] | None = None):
        """`picture`: the image, already decoded and scaled (off the event loop). `stages`: a flow's
        images before its last stage (their stage_image records) with their pictures, in order."""
        super().__init__()
        self.job_id, self.spec, self.image_class = job_id, spec, image_class
        self.shown = [*(stages or ()), (image, picture)]  # the job's image last, and in view first
        self.at = len(self.shown) - 1

    def compose(self) -> ComposeResult:
        image, picture = self.shown[self.at]
        with Horizontal():
            if self.image_class:
                yield self.image_class(picture, id="large")
            else:
                yield Static(plain(image["path"]), id="large")
            table = DataTable(cursor_type="none", show_header=False, id="parameters")
            table.add_columns("", "")
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self._show_rows()

    def action_requeue(self) -> None:
        """Render it again with its seed: for a provider that takes none, a new, different image (said so)."""
        image = self.shown[-1][0]
        if not reproducible(image):
            self.app.notify(f"{self.job_id} image {image['image']} was rendered without a seed: rendered again, "
                            "it is a new, different image", title="not reproducible", markup=False)
        self.dismiss("requeue")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool:
        return action != "stage" or len(self.shown) > 1  # `[` and `]` only where there are stages

    def action_stage(self, step: int) -> None:
        at = max(0, min(len(self.shown) - 1, self.at + step))
        if at == self.at:
            return
        self.at = at
        image, picture = self.shown[at]
        if self.image_class:
            self.query_one("#large", self.image_class).image = picture
        else:
            self.query_one("#large", Static).update(plain(image["path"]))
        self._show_rows()

    def measured(self, job_id: str, index: int, quality: dict[str, Any]) -> None:
        """The image's quality measures, recorded while it is in view."""
        image, picture = self.shown[-1]
        if (job_id, index) == (self.job_id, image["image"]):
            self.shown[-1] = ({**image, "quality": quality}, picture)
            self._show_rows()

    def _show_rows(self) -> None:
        table = self.query_one("#parameters", DataTable)
        table.clear()
        image = self.shown[self.at][0]
        rows = parameter_rows(self.job_id, self.spec, image)
        measures = quality_rows(image.get("quality")) if "stage" not in image else []  # the job's image's, not a stage's
        rows[-2:-2] = [*flow_rows(self.spec, [shown for shown, _ in self.shown], image), *measures]  # before the file
        table.add_rows([(name, plain(value)) for name, value in rows])


def parameter_rows(job_id: str, spec: dict[str, Any], image: dict[str, Any]) -> list[tuple[str, str]]:
    t = image.get("timings") or {}
    hosted = hosted_record(image)
    rows = [("prompt", spec.get("prompt", "")), ("negative", spec.get("negative_prompt") or "—"),
            ("model", spec.get("model", ""))]
    size = f"{spec.get('width')}x{spec.get('height')}"
    if hosted is None:
        rows += [("seed", str(image.get("seed"))), ("steps", str(spec.get("steps"))),
                 ("guidance", str(spec.get("guidance"))), ("size", size), ("scheduler", str(spec.get("scheduler")))]
    else:  # what the provider was asked and gave back; it is sent no steps, guidance or scheduler
        returned = hosted.get("returned") if isinstance(hosted.get("returned"), dict) else {}
        rows += [("provider", f"{hosted.get('provider')} · model {hosted.get('model_id')}"),
                 ("seed", str(image.get("seed")) if reproducible(image) else "not sent (not reproducible)"),
                 ("size", f"{size} asked · {returned.get('width')}x{returned.get('height')} returned")]
    rows.append(("job", f"{job_id} image {image['image']}"))
    rows += [(name, f"{seconds:.3f} s") for name, seconds in render_parts(t, hosted is not None)]
    if image.get("peak_memory"):
        rows.append(("peak memory", f"{image['peak_memory'] / 2**30:.2f} GiB"))
    if "cost_usd" in image:  # a hosted model's image, paid for
        rows.append(("cost", cost_text(image["cost_usd"])))
    rows += [("pixels sha256", str(image.get("pixel_sha256", ""))[:16] + "…"), ("file", image["path"])]
    return rows


def flow_rows(spec: dict[str, Any], images: list[dict[str, Any]], shown: dict[str, Any]) -> list[tuple[str, str]]:
    """The route that chose the job and why; its flow's stages, each with its kind, model, size and
    settings, and how long its image took. `images`: this image's stage images and the job's image
    (its last stage's); `shown`: the one in view."""
    rows = [("route", spec.get("routed_by") or spec["route"])] if spec.get("route") else []
    if spec.get("loras"):
        rows.append(("loras", ", ".join(f"{lora.name}:{lora.weight:g}" for lora in loras_from(spec["loras"]))))
    stages = spec.get("stages") or ()
    if stages:
        rows.append(("flow", str(spec.get("flow") or "—")))
    by_stage = {image.get("stage", len(stages) - 1): image for image in images}
    for i, stage in enumerate(stages):
        timings = by_stage.get(i, {}).get("timings") or {}
        taken = render_seconds(timings)
        seconds = [f"{taken:.2f} s"] if taken is not None else []
        parts = [stage["kind"], *seconds, f"{stage.get('width')}x{stage.get('height')}",
                 str(stage.get("model") or spec.get("model")), f"{stage.get('steps') or spec.get('steps')} steps"]
        parts += [f"{name} {stage[name]}" for name in ("strength", "factor", "method", "tile", "switch") if name in stage]
        rows.append((f"{'▸' if by_stage.get(i) is shown else ' '} stage {i}", " · ".join(parts)))
    return rows
