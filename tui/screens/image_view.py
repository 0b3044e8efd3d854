"""One image, larger, with every parameter it was made with; re-queue it, copy its prompt,
or pin it for the A/B view."""

from __future__ import annotations

from typing import Any

from diffdeck.tui.plain import plain
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static


class ImageScreen(ModalScreen[str | None]):
    """Dismissed with what the user chose: "requeue", "copy_prompt", "pin", or None."""

    BINDINGS = [
        Binding("escape,q", "dismiss(None)", "Close", id="close_image"),
        Binding("r", "dismiss('requeue')", "Re-queue", id="requeue_image"),
        Binding("c", "dismiss('copy_prompt')", "Copy prompt", id="copy_prompt"),
        Binding("a", "dismiss('pin')", "Pin for A/B", id="pin_image"),
    ]
    AUTO_FOCUS = "#parameters"  # a long prompt scrolls

    def __init__(self, job_id: str, spec: dict[str, Any], image: dict[str, Any], picture: Any, image_class: Any):
        """`picture`: the image, already decoded and scaled (off the event loop)."""
        super().__init__()
        self.job_id, self.spec, self.image, self.picture, self.image_class = job_id, spec, image, picture, image_class

    def compose(self) -> ComposeResult:
        with Horizontal():
            if self.image_class:
                yield self.image_class(self.picture, id="large")
            else:
                yield Static(plain(self.image["path"]), id="large")
            table = DataTable(cursor_type="none", show_header=False, id="parameters")
            table.add_columns("", "")
            table.add_rows([(name, plain(value)) for name, value in parameter_rows(self.job_id, self.spec, self.image)])
            yield table
        yield Footer()


def parameter_rows(job_id: str, spec: dict[str, Any], image: dict[str, Any]) -> list[tuple[str, str]]:
    t = image.get("timings") or {}
    rows = [("prompt", spec.get("prompt", "")), ("negative", spec.get("negative_prompt") or "—"),
            ("model", spec.get("model", "")), ("seed", str(image.get("seed"))), ("steps", str(spec.get("steps"))),
            ("guidance", str(spec.get("guidance"))), ("size", f"{spec.get('width')}x{spec.get('height')}"),
            ("scheduler", str(spec.get("scheduler"))), ("job", f"{job_id} image {image['image']}")]
    rows += [(name, f"{t[key]:.3f} s") for name, key in (("denoise", "denoise_s"), ("decode", "decode_s"),
                                                        ("save", "save_s")) if key in t]
    if image.get("peak_memory"):
        rows.append(("peak memory", f"{image['peak_memory'] / 2**30:.2f} GiB"))
    rows += [("pixels sha256", str(image.get("pixel_sha256", ""))[:16] + "…"), ("file", image["path"])]
    return rows
