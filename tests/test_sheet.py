"""Contact sheets drawn from a session recorded by hand: real PNGs, nothing rendered."""

from __future__ import annotations

import pytest
from diffdeck.engines.record.session import Session
from diffdeck.engines.sets.contact_sheet import (
    MAX_SHEET,
    MIN_SIDE,
    MIN_SLOT,
    MISSING,
    STAR,
    SheetError,
    contact_sheet,
    layout,
)
from PIL import Image

BASE = {"prompt": "a cat on a sofa", "model": "demo", "negative_prompt": "", "seed": 5, "seeds": [5, 6],
        "steps": 2, "guidance": 7.0, "width": 64, "height": 64, "scheduler": "euler", "count": 2, "group": None}


def colour(n: int) -> tuple[int, int, int]:
    """A distinct colour for each image written, none of them the sheet's own."""
    return 40 + 23 * n % 200, 200 - 17 * n % 150, 90 + 31 * n % 160


def add_set(session: Session, kind: str, axes: list, variants: list[tuple[str, dict, list]]) -> None:
    session.append({"type": "set", "set": "set-0001", "kind": kind, "base": BASE, "axes": axes,
                    "variants": [{"label": label, "changes": changes, "cell": cell, "job": f"job-{n + 1:04d}"}
                                 for n, (label, changes, cell) in enumerate(variants)]})


def render(session: Session, job: str, images: int, first_colour: int) -> None:
    """Record a job as done with `images` solid 64x64 PNGs of colours first_colour, first_colour + 1, ..."""
    session.append({"type": "queued", "job": job, "spec": {**BASE, "group": "set-0001"}, "position": 0})
    session.images_dir.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        path = session.images_dir / f"{job}-{i}.png"
        Image.new("RGB", (64, 64), colour(first_colour + i)).save(path)
        session.append({"type": "image", "job": job, "image": i, "seed": 5 + i, "path": str(path.resolve()),
                        "pixel_sha256": "x", "timings": {}, "peak_memory": None})
    session.append({"type": "done", "job": job, "timings": {}, "peak_memory": None})


def centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2


def axis(name: str, values: list) -> dict:
    return {"name": name, "text": f"{name}={','.join(map(str, values))}", "labels": [str(v) for v in values],
            "values": values}


def test_ab_sheet_puts_each_image_in_its_variant_column_and_seed_row(tmp_path):
    session = Session.open(tmp_path / "s")
    add_set(session, "ab", [], [("A", {}, [0]), ("B", {"prompt": "a dog on a sofa"}, [1])])
    render(session, "job-0001", 2, 0)
    render(session, "job-0002", 2, 10)
    session.rate("job-0002", 1, 4)
    session.pick("set-0001", 1, "job-0001", "job-0002", "job-0002")

    assert contact_sheet(session, "set-0001") == [tmp_path / "s" / "sheets" / "set-0001.png"]

    with Image.open(tmp_path / "s" / "sheets" / "set-0001.png") as sheet:
        sheet.load()
    assert sheet.format == "PNG"
    grid = layout(session, session.sets["set-0001"])
    assert grid.slot == (MIN_SIDE, MIN_SIDE)  # 64 px scaled up
    assert sheet.width >= 2 * MIN_SIDE + 100 and sheet.height >= 2 * MIN_SIDE + 100
    for column, first in enumerate((0, 10)):
        for row in range(2):
            box = grid.image_box(column, row)
            assert box[2] <= sheet.width and box[3] <= sheet.height
            assert sheet.getpixel(centre(box)) == colour(first + row), (column, row)
            assert sheet.getpixel((box[0], box[1])) == colour(first + row)  # scaled to fill the slot
    rated, unrated = grid.image_box(1, 1), grid.image_box(0, 1)
    caption = (rated[0], rated[3], rated[2], rated[3] + 20)
    assert STAR in [colour for _, colour in sheet.crop(caption).getcolors(10000)]
    caption = (unrated[0], unrated[3], unrated[2], unrated[3] + 20)
    assert STAR not in [colour for _, colour in sheet.crop(caption).getcolors(10000)]
    assert not list((tmp_path / "s" / "sheets").glob("*.part"))


def test_grid_with_a_page_axis_writes_one_sheet_per_page(tmp_path):
    session = Session.open(tmp_path / "s")
    axes = [axis("steps", [2, 3]), axis("model", ["demo", "demo2"]), axis("guidance", [1.0, 7.0])]
    cells = [[x, y, page] for page in range(2) for y in range(2) for x in range(2)]
    add_set(session, "grid", axes, [(f"cell {cell}", {}, cell) for cell in cells])
    for n in range(len(cells)):
        render(session, f"job-{n + 1:04d}", 2, 10 * n)

    paths = contact_sheet(session, "set-0001")

    assert [p.name for p in paths] == ["set-0001-page1.png", "set-0001-page2.png"]
    grid = layout(session, session.sets["set-0001"])
    assert (grid.columns, grid.rows, grid.per_cell) == (2, 2, 2)
    for page, path in enumerate(paths):
        with Image.open(path) as sheet:
            for n, (x, y, cell_page) in enumerate(cells):
                if cell_page == page:
                    for i in range(2):
                        assert sheet.getpixel(centre(grid.image_box(x, y, i))) == colour(10 * n + i), (x, y, page, i)


def test_a_variant_without_images_gets_a_grey_cell(tmp_path):
    session = Session.open(tmp_path / "s")
    add_set(session, "ab", [], [("A", {}, [0]), ("B", {"steps": 3}, [1]), ("C", {"steps": 4}, [2])])
    render(session, "job-0001", 2, 0)
    (session.images_dir / "job-0001-1.png").unlink()  # recorded, then lost
    session.append({"type": "queued", "job": "job-0002", "spec": BASE, "position": 1})
    session.append({"type": "failed", "job": "job-0002", "error": "out of memory"})
    # job-0003 was never queued: the session has no record of it

    [path] = contact_sheet(session, "set-0001")

    grid = layout(session, session.sets["set-0001"])
    with Image.open(path) as sheet:
        assert sheet.getpixel(centre(grid.image_box(0, 0))) == colour(0)
        for column, row in ((0, 1), (1, 0), (1, 1), (2, 0), (2, 1)):
            box = grid.image_box(column, row)
            assert sheet.getpixel((box[0] + 2, box[1] + 2)) == MISSING, (column, row)


def test_an_unknown_set_is_refused_by_name(tmp_path):
    session = Session.open(tmp_path / "s")
    with pytest.raises(SheetError, match="set-0042"):
        contact_sheet(session, "set-0042")
    assert not (tmp_path / "s" / "sheets").exists()


def test_a_huge_grid_makes_a_sheet_of_bounded_size(tmp_path):
    session = Session.open(tmp_path / "s")
    axes = [{"name": "steps", "text": "steps=1..40", "labels": [str(i) for i in range(40)], "values": list(range(40))},
            {"name": "seed", "text": "seed=1..50", "labels": [str(i) for i in range(50)], "values": list(range(50))}]
    entry = {"kind": "grid", "base": {"prompt": "p", "model": "demo", "count": 2}, "axes": axes,
             "variants": [], "picks": []}
    grid = layout(session, entry)
    assert max(grid.size) <= MAX_SHEET and min(grid.slot) >= MIN_SLOT
