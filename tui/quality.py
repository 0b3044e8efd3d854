"""An image's quality measures as the session records them (diffdeck.engines.sets.quality), in
figures: rows for the image and compare views, and the summary table of `diffdeck ab` and `grid`.
Plain text; a value that is not a number (not measured, or a hostile record) shows as a dash."""

from __future__ import annotations

from typing import Any

from diffdeck.engines.core.validation import is_finite_number

# (name in the record, what the views call it, its format): what an image measures alone
ALONE = (("sharpness", "sharpness", "{:.1f}"), ("blur", "blur effect", "{:.3f}"), ("noise", "noise σ", "{:.2f}"),
         ("colourfulness", "colourfulness", "{:.1f}"), ("entropy", "entropy bits", "{:.2f}"))
AGAINST = (("ssim", "SSIM", "{:.4f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"))  # against its reference
FORMATS = {name: form for name, _, form in ALONE + AGAINST}


def figure(quality: dict[str, Any] | None, name: str) -> str:
    value = quality.get(name) if isinstance(quality, dict) else None
    return FORMATS[name].format(value) if is_finite_number(value) else "—"


def quality_rows(quality: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) rows of an image's measures, and of its reference where it has one."""
    if not isinstance(quality, dict):
        return [("quality", "not measured yet")]
    if isinstance(quality.get("failed"), str):
        return [("quality", f"not measured: {quality['failed']}")]
    rows = [(label, figure(quality, name)) for name, label, _ in ALONE]
    if is_finite_number(quality.get("measured_side")):
        rows.append(("measured on", f"a copy scaled to {quality['measured_side']} px on its longer side"))
    reference = quality.get("reference")
    if isinstance(reference, str):
        if figure(quality, "ssim") == "—":
            why = quality.get("ssim_unmeasured", "no reason recorded")
            rows.append(("SSIM", f"not measured against {reference}: {why}"))
        else:
            rows += [("SSIM", f"{figure(quality, 'ssim')} against {reference}"),
                     ("MS-SSIM", f"{figure(quality, 'ms_ssim')} at {quality.get('ms_ssim_scales')} scales")]
    return rows


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A table of a set's images (`pairs.set_quality`'s rows), a line each after a header: every
    measure, SSIM against the first variant's image of the same index, the variant's label last."""
    header = ["image", "seed", *(label for _, label, _ in ALONE), "SSIM", "MS-SSIM", "variant"]
    table = [[str(row["image"]), str(row["seed"]),
              *(figure(row["quality"], name) for name, _, _ in ALONE + AGAINST), row["label"]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[-1]]) for line in [header, *table]]
