"""What the compare view shows: two variants of an A/B set or grid side by side at one image
index, or two pinned images. Plain state over the session's record and the Board's rows; no
widgets. The user's picks and ratings are read from the session, which records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffdeck.engines.core.events import render_seconds
from diffdeck.engines.core.validation import is_finite_number
from diffdeck.engines.record.session import Session
from diffdeck.tui.quality import ALONE, figure
from diffdeck.tui.workbench_state import JobRow, cost_text

LEFT, RIGHT = 0, 1
# (row name, spec key); size is width x height
PARAMETERS = (("prompt", "prompt"), ("negative", "negative_prompt"), ("model", "model"), ("steps", "steps"),
              ("guidance", "guidance"), ("size", "size"), ("scheduler", "scheduler"))


@dataclass(frozen=True)
class Side:
    label: str
    job: str
    spec: dict[str, Any]
    image: dict[str, Any] | None  # the image record (absolute path), None: not rendered (yet)
    rating: int
    status: str

    @property
    def index(self) -> int | None:
        return self.image["image"] if self.image else None


class Comparison:
    def __init__(self, session: Session, rows: dict[str, JobRow], set_id: str | None,
                 variants: list[dict[str, Any]]):
        """`variants`: label and job of each, in reading order; a pinned image also has its `image`."""
        self.session, self.rows, self.set_id, self.variants = session, rows, set_id, variants
        self.chosen = [0, min(1, len(variants) - 1)]  # the variants on the left and on the right
        self.index = 0  # the image index of a set's pair

    @classmethod
    def of_set(cls, session: Session, rows: dict[str, JobRow], set_id: str) -> "Comparison":
        variants = sorted(session.sets[set_id]["variants"], key=lambda v: list(reversed(v["cell"])))
        return cls(session, rows, set_id, variants)

    @classmethod
    def of_pinned(cls, session: Session, rows: dict[str, JobRow], pinned: list[tuple[str, int]]) -> "Comparison":
        return cls(session, rows, None, [{"label": label, "job": job, "image": image}
                                         for label, (job, image) in zip("AB", pinned)])

    @property
    def kind(self) -> str:
        return {"ab": "A/B", "grid": "grid"}[self.session.sets[self.set_id]["kind"]] if self.set_id else "pinned"

    @property
    def count(self) -> int:
        """Image indices a set's pair can step through."""
        if self.set_id is None:
            return 1
        return max((self.rows[v["job"]].count for v in self.variants if v["job"] in self.rows), default=1)

    def side(self, which: int) -> Side:
        return self.side_at(self.chosen[which])

    def side_at(self, position: int) -> Side:
        """The variant at `position` in `variants`, at the current image index."""
        variant = self.variants[position]
        row = self.rows.get(variant["job"])
        index = variant.get("image", self.index)
        image = next((i for i in row.images if i["image"] == index), None) if row else None
        return Side(variant["label"], variant["job"], row.spec if row else {}, image,
                    self._rating(variant["job"], index), row.status if row else "not in this session")

    def step_image(self, step: int) -> None:
        self.index = (self.index + step) % self.count

    def step_variant(self, which: int, step: int) -> None:
        """The next variant on one side, never the one on the other side."""
        other = self.chosen[1 - which]
        candidate = self.chosen[which]
        for _ in range(len(self.variants)):
            candidate = (candidate + step) % len(self.variants)
            if candidate != other:
                break
        self.chosen[which] = candidate

    def swap(self) -> None:
        self.chosen.reverse()

    def pick(self) -> str | None:
        """The recorded winner of the pair on screen: LEFT's job, RIGHT's job, TIE, or None."""
        if self.set_id is None:
            return None
        left, right = self.side(LEFT).job, self.side(RIGHT).job
        return next((p["winner"] for p in self.session.sets[self.set_id]["picks"]
                     if p["image"] == self.index and {p["left"], p["right"]} == {left, right}), None)

    def wins_text(self) -> str:
        if self.set_id is None:
            return "pinned images: ratings are kept; picks belong to A/B sets and grids"
        wins = self.session.wins(self.set_id)
        if len(wins) > 4:  # a grid: only who has won something
            wins = {label: n for label, n in wins.items() if n}
        return "wins: " + (" · ".join(f"{label} {n}" for label, n in wins.items()) or "no picks yet")

    def parameter_rows(self) -> list[tuple[str, str, str, bool]]:
        """(name, left, right, differs) for what made the images, then what it cost them and what
        each measures."""
        left, right = self.side(LEFT), self.side(RIGHT)
        rows = [(name, _value(left, key), _value(right, key)) for name, key in PARAMETERS]
        rows.append(("seed", _seed(left), _seed(right)))
        compared = [(name, a, b, a != b) for name, a, b in rows]
        for name, seconds in (("denoise", lambda t: t.get("denoise_s")), ("decode", lambda t: t.get("decode_s")),
                              ("render", render_seconds)):  # no queue wait, no model load
            compared.append((name, _seconds(left, seconds), _seconds(right, seconds), False))
        compared.append(("peak memory", _memory(left), _memory(right), False))
        if any("cost_usd" in (side.image or {}) for side in (left, right)):  # a hosted model's image: paid for
            costs = [_cost(side) for side in (left, right)]
            compared.append(("cost", *costs, costs[0] != costs[1]))
        compared.append(("rating", _stars(left.rating), _stars(right.rating), False))
        for name, label, _ in ALONE:  # what each image measures alone
            compared.append((label, *(figure((side.image or {}).get("quality"), name) for side in (left, right)), False))
        return compared

    def recorded_ssim(self) -> float | None:
        """The SSIM the session recorded between the two images on screen: where the right one was
        measured against the left one (as the quality recorder names a set's first variant's image);
        None where it was not."""
        left, right = self.side(LEFT), self.side(RIGHT)
        quality = (right.image or {}).get("quality")
        if left.image is None or not isinstance(quality, dict) or not is_finite_number(quality.get("ssim")):
            return None
        reference = quality.get("reference")
        return quality["ssim"] if isinstance(reference, str) and reference.startswith(
            f"{left.job} image {left.index} (") else None

    def _rating(self, job_id: str, index: int) -> int:
        job = self.session.jobs.get(job_id) or {"images": []}
        return next((i.get("rating", 0) for i in job["images"] if i["image"] == index), 0)


def _value(side: Side, key: str) -> str:
    if key == "size":
        return f"{side.spec.get('width')}x{side.spec.get('height')}"
    value = side.spec.get(key)
    return "—" if value in (None, "") else str(value)


def _cost(side: Side) -> str:
    if side.image is None:
        return "—"
    return cost_text(side.image["cost_usd"]) if "cost_usd" in side.image else "free"


def _seed(side: Side) -> str:
    return str(side.image["seed"]) if side.image else "—"


def _seconds(side: Side, seconds: Callable[[dict[str, Any]], float | None]) -> str:
    taken = seconds((side.image or {}).get("timings", {}))
    return f"{taken:.2f} s" if isinstance(taken, (int, float)) else "—"


def _memory(side: Side) -> str:
    peak = (side.image or {}).get("peak_memory")
    return f"{peak / 2**30:.2f} GiB" if peak else "—"


def _stars(stars: int) -> str:
    return "★" * stars + "☆" * (5 - stars) if stars else "—"
