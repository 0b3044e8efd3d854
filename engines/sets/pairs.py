"""The pairs of an A/B set: image i of A against image i of each other variant, measured; and
what each image of a set measures, as recorded. UI side: PIL only."""

from __future__ import annotations

import math
from typing import Any

from diffdeck.engines.record.session import Session
from diffdeck.engines.sets.similarity import measure, not_comparable
from PIL import Image


def set_differences(session: Session, set_id: str) -> list[dict[str, Any]]:
    """For each variant after the first and each image both have on disk: PSNR (None when
    identical) and perceptual-hash distance against the first variant's image, and a note
    ("identical pixels"; for images of different sizes, both figures None and why)."""
    variants = session.sets[set_id]["variants"]
    first, others = min(variants, key=lambda v: v["cell"]), sorted(variants, key=lambda v: v["cell"])[1:]
    pairs = []
    for other in others:
        for index, (left, right) in _paired_images(session, first["job"], other["job"]).items():
            with Image.open(session.resolve(left["path"])) as a, Image.open(session.resolve(right["path"])) as b:
                pair = {"image": index, "seed": left["seed"], "left": first["label"], "right": other["label"]}
                pairs.append({**pair, **_measures(a, b)})
    return pairs


def set_quality(session: Session, set_id: str) -> list[dict[str, Any]]:
    """Each variant's images, in the set's order, with what each measures as the session recorded
    it (diffdeck.engines.sets.quality; None: not measured): label, job, image, seed, quality."""
    rows = []
    for variant in sorted(session.sets[set_id]["variants"], key=lambda v: v["cell"]):
        job = session.jobs.get(variant["job"]) or {"images": []}
        rows += [{"label": variant["label"], "job": variant["job"], "image": image["image"], "seed": image["seed"],
                  "quality": image.get("quality")} for image in sorted(job["images"], key=lambda i: i["image"])]
    return rows


def _measures(a: Image.Image, b: Image.Image) -> dict[str, Any]:
    if why := not_comparable(a, b):
        return {"psnr_db": None, "phash_distance": None, "note": why}
    db, distance = measure(a, b)
    identical = math.isinf(db)
    return {"psnr_db": None if identical else round(db, 2), "phash_distance": distance,
            "note": "identical pixels" if identical else None}


def _paired_images(session: Session, left: str, right: str) -> dict[int, tuple[dict, dict]]:
    def on_disk(job_id: str) -> dict[int, dict]:
        job = session.jobs.get(job_id) or {"images": []}
        return {i["image"]: i for i in job["images"] if session.resolve(i["path"]).is_file()}

    a, b = on_disk(left), on_disk(right)
    return {index: (a[index], b[index]) for index in sorted(a.keys() & b.keys())}
