"""Contact sheets: an A/B set or a grid of a session drawn as one PNG (one per page of a grid),
each image under its variant's label, with its rating and the picks, in `<session>/sheets/`.

    A/B    one column per variant, one row per image (seed)
    grid   columns: the x axis, rows: the y axis; each cell holds its job's images side by side

UI side: PIL only.
"""

from __future__ import annotations

import math
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from diffdeck.engines.core.events import Status
from diffdeck.engines.record.session import TIE, Session
from diffdeck.engines.sets.variants import AXES
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE, MAX_SIDE = 192, 512  # an image's longer side on the sheet
MAX_SHEET, MIN_SLOT = 8192, 24  # a sheet's longer side; an image slot shrinks to fit, down to this
PAD, LINE = 12, 20
LABEL_WIDTH = 170  # the row labels on the left
TITLE_HEIGHT = 2 * PAD + 5 * LINE  # set line, two of prompt, settings, axes
MIN_WIDTH = 640
BACKGROUND, TEXT, DIM, MISSING, STAR = (34, 34, 38), (230, 230, 230), (150, 150, 155), (80, 80, 84), (240, 196, 60)
FONT, TITLE_FONT = ImageFont.load_default(size=15), ImageFont.load_default(size=18)


class SheetError(Exception):
    """A contact sheet that cannot be drawn, such as one of a set the session does not have."""


def scaled(width: int, height: int) -> tuple[int, int]:
    """The size an image takes on a sheet: small ones up to MIN_SIDE, big ones down to MAX_SIDE."""
    side = max(width, height)
    factor = MIN_SIDE / side if side < MIN_SIDE else MAX_SIDE / side if side > MAX_SIDE else 1
    return max(1, round(width * factor)), max(1, round(height * factor))


@dataclass(frozen=True)
class Layout:
    """Where things go: columns x rows cells of `per_cell` image slots of one size each."""
    columns: int
    rows: int
    per_cell: int
    slot: tuple[int, int]

    @property
    def cell_width(self) -> int:
        return self.per_cell * (self.slot[0] + PAD) + PAD

    @property
    def row_height(self) -> int:
        return self.slot[1] + LINE + PAD

    @property
    def size(self) -> tuple[int, int]:
        return (max(MIN_WIDTH, LABEL_WIDTH + self.columns * self.cell_width + PAD),
                TITLE_HEIGHT + LINE + self.rows * self.row_height + PAD)

    def image_box(self, column: int, row: int, slot: int = 0) -> tuple[int, int, int, int]:
        """The box (left, top, right, bottom exclusive) of one image slot."""
        left = LABEL_WIDTH + column * self.cell_width + PAD + slot * (self.slot[0] + PAD)
        top = TITLE_HEIGHT + LINE + row * self.row_height
        return left, top, left + self.slot[0], top + self.slot[1]


def layout(session: Session, entry: dict[str, Any]) -> Layout:
    """One layout for every page of a set: its slots fit the largest of its images, made smaller
    when the sheet would pass MAX_SHEET pixels a side (a 40 x 50 grid, say)."""
    sizes = [scaled(*size) for size in _sizes(session, entry)] or [(MIN_SIDE, MIN_SIDE)]
    slot = max(w for w, _ in sizes), max(h for _, h in sizes)
    count, axes = entry["base"]["count"], entry["axes"]
    if entry["kind"] == "ab":
        shape = (len(entry["variants"]), count, 1)
    else:
        shape = (len(axes[0]["labels"]), len(axes[1]["labels"]) if len(axes) > 1 else 1, count)
    grid = Layout(*shape, slot)
    while max(grid.size) > MAX_SHEET and min(grid.slot) > MIN_SLOT:
        factor = min(0.9, MAX_SHEET / max(grid.size))
        grid = Layout(*shape, (max(MIN_SLOT, int(slot[0] * factor)), max(MIN_SLOT, int(slot[1] * factor))))
        slot = grid.slot
    return grid


def contact_sheet(session: Session, set_id: str) -> list[Path]:
    """Write the set's sheet(s) and return their paths: `<set_id>.png`, or for a grid with a
    page axis one `<set_id>-page<k>.png` per page (k from 1)."""
    entry = session.sets.get(set_id)
    if entry is None:
        raise SheetError(f"the session has no set {set_id!r}; its sets: {', '.join(session.sets) or 'none'}")
    folder = session.folder / "sheets"
    folder.mkdir(parents=True, exist_ok=True)
    if len(entry["axes"]) < 3:
        return [_save(_draw(session, set_id, entry, None), folder / f"{set_id}.png")]
    return [_save(_draw(session, set_id, entry, page), folder / f"{set_id}-page{page + 1}.png")
            for page in range(len(entry["axes"][2]["labels"]))]


def _save(sheet: Image.Image, path: Path) -> Path:
    """Atomically, through a temporary file of its own: two exports at once do not collide. Made
    as any file is (0666 less the umask), so a sheet is as readable as the images beside it."""
    part = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            sheet.save(f, format="PNG")
        os.replace(part, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(part)
        raise
    return path


def _draw(session: Session, set_id: str, entry: dict[str, Any], page: int | None) -> Image.Image:
    grid = layout(session, entry)
    sheet = Image.new("RGB", grid.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _title(draw, session, set_id, entry, page, sheet.width - 2 * PAD)
    base, axes = entry["base"], entry["axes"]
    if entry["kind"] == "ab":
        variants = sorted(entry["variants"], key=lambda v: v["cell"][0])  # a replay may hold only some
        headers = [" · ".join([v["label"], *(f"{k}: {value}" for k, value in v["changes"].items())]) for v in variants]
        seeds = base.get("seeds") or []
        rows = [f"#{i} seed {seeds[i] if i < len(seeds) else '?'}" for i in range(base["count"])]
        places = [(v["job"], column, i, 0, i) for column, v in enumerate(variants) for i in range(base["count"])]
    else:
        headers = [f"{axes[0]['name']}={label}" for label in axes[0]["labels"]]
        rows = [f"{axes[1]['name']}={label}" for label in axes[1]["labels"]] if len(axes) > 1 else [""]
        places = [(v["job"], v["cell"][0], v["cell"][1] if len(axes) > 1 else 0, i, i)
                  for v in entry["variants"] if page is None or v["cell"][2] == page for i in range(base["count"])]
    for column, header in enumerate(headers):
        left = grid.image_box(column, 0)[0]
        draw.text((left, TITLE_HEIGHT), _fit(header, grid.cell_width - 2 * PAD), font=FONT, fill=TEXT)
    for row, label in enumerate(rows):
        top, bottom = grid.image_box(0, row)[1::2]
        draw.text((PAD, (top + bottom) // 2), _fit(label, LABEL_WIDTH - 2 * PAD), font=FONT, fill=TEXT, anchor="lm")
    for job_id, column, row, slot, index in places:
        _image(sheet, draw, session, entry, job_id, index, grid.image_box(column, row, slot))
    return sheet


def _title(draw: ImageDraw.ImageDraw, session: Session, set_id: str, entry: dict[str, Any], page: int | None,
           width: int) -> None:
    base, axes = entry["base"], entry["axes"]
    if entry["kind"] == "ab":
        head = f"{set_id} · A/B · {len(entry['variants'])} variants"
    else:
        head = f"{set_id} · grid · " + " x ".join(str(len(a["labels"])) for a in axes)
    # what the variants share, as rendered (a model's defaults filled in); what they vary is in the headers
    first = session.jobs.get(entry["variants"][0]["job"], {}).get("spec", {}) if entry["variants"] else {}
    shared = {k: first.get(k, base.get(k)) for k in base}
    varied = {k for v in entry["variants"] for k in v["changes"]}
    varied |= {"size"} if varied & {"width", "height"} else set()
    size = f"{shared['width']}x{shared['height']}" if shared.get("width") and shared.get("height") else "default"
    settings = {"model": shared["model"], "seeds": ", ".join(map(str, base.get("seeds") or [])) or "random",
                "steps": shared.get("steps"), "guidance": shared.get("guidance"), "size": size,
                "scheduler": shared.get("scheduler")}
    settings = {k: v for k, v in settings.items() if k not in varied}
    axis_line = [f"{name}: {axis['text']}" for name, axis in zip(AXES, axes[:2])]
    if page is not None:
        axis_line.append(f"page: {axes[2]['name']}={axes[2]['labels'][page]}")
    draw.text((PAD, PAD), _fit(head, width, TITLE_FONT), font=TITLE_FONT, fill=TEXT)
    prompt = _wrap(f"prompt: {base['prompt']}", width, 2)
    lines = [*prompt, " · ".join(f"{k} {'default' if v is None else v}" for k, v in settings.items()),
             "   ".join(axis_line)]
    for n, line in enumerate(lines, start=1):
        draw.text((PAD, PAD + n * LINE), _fit(line, width), font=FONT, fill=TEXT if n <= len(prompt) else DIM)


def _image(sheet: Image.Image, draw: ImageDraw.ImageDraw, session: Session, entry: dict[str, Any],
           job_id: str, index: int, box: tuple[int, int, int, int]) -> None:
    """One image fitted into its box with its caption; a grey box saying why when there is none."""
    left, top, right, bottom = box
    job = session.jobs.get(job_id)
    record = next((i for i in job["images"] if i["image"] == index), None) if job else None
    picture = None
    if record is not None:
        with suppress(OSError), Image.open(session.resolve(record["path"])) as opened:
            picture = opened.convert("RGB")
    if picture is None:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=MISSING)
        why = "file missing" if record else job["status"] if job and job["status"] != Status.DONE else "not rendered"
        draw.text(((left + right) // 2, (top + bottom) // 2), why, font=FONT, fill=TEXT, anchor="mm")
        return
    factor = min((right - left) / picture.width, (bottom - top) / picture.height)
    size = max(1, round(picture.width * factor)), max(1, round(picture.height * factor))
    resample = Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.LANCZOS
    corner = left + (right - left - size[0]) // 2, top + (bottom - top - size[1]) // 2
    sheet.paste(picture.resize(size, resample), corner)
    x, middle = left, bottom + LINE // 2
    for star in range(5 if record.get("rating") else 0):
        _star(draw, x + 7 + star * 15, middle, 6, star < record["rating"])
    x += 80 if record.get("rating") else 0
    draw.text((x, middle), _verdict(entry, job_id, index), font=FONT, fill=TEXT, anchor="lm")


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, filled: bool) -> None:
    # Drawn, not typed: the font PIL bundles has no star glyph.
    points = [(x + r * math.sin(k * math.pi / 5), y - r * math.cos(k * math.pi / 5))
              for k, r in ((k, radius if k % 2 == 0 else radius * 0.45) for k in range(10))]
    draw.polygon(points, fill=STAR if filled else None, outline=STAR)


def _verdict(entry: dict[str, Any], job_id: str, index: int) -> str:
    picks = [p for p in entry["picks"] if p["image"] == index and job_id in (p["left"], p["right"])]
    if any(p["winner"] == job_id for p in picks):
        return "winner"
    return "tie" if any(p["winner"] == TIE for p in picks) else ""


def _sizes(session: Session, entry: dict[str, Any]) -> Iterator[tuple[int, int]]:
    """The sizes of the set's images on disk."""
    for variant in entry["variants"]:
        for record in session.jobs.get(variant["job"], {}).get("images", []):
            with suppress(OSError), Image.open(session.resolve(record["path"])) as picture:
                yield picture.size


def _fit(text: str, width: int, font: ImageFont.FreeTypeFont = FONT) -> str:
    """The text, cut with an ellipsis to fit `width` pixels."""
    if font.getlength(text) <= width:
        return text
    text = text[: width // 2]  # no glyph is narrower than 2 px: start near the end
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, width: int, lines: int) -> list[str]:
    """Words on at most `lines` lines of `width` pixels; the last one cut if the text is longer."""
    words, out = text.split(), []
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and FONT.getlength(f"{line} {words[0]}") <= width:
            line += " " + words.pop(0)
        out.append(line)
    return out + [" ".join(words)] if words else out
