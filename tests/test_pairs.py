"""A/B pairs and replay verdicts of images that cannot be compared pixel for pixel (their sizes
differ): said so, never given made-up figures. A session recorded by hand: real PNGs, nothing rendered."""

from __future__ import annotations

from diffdeck.engines.record.session import Session
from diffdeck.engines.sets.pairs import set_differences
from diffdeck.engines.sets.similarity import Tolerance, compare
from PIL import Image

SPEC = {"prompt": "a red circle", "model": "demo", "negative_prompt": "", "seed": 5, "seeds": [5, 6], "steps": 2,
        "guidance": 7.0, "width": 64, "height": 64, "scheduler": "euler", "count": 2, "group": "set-0001"}
NOT_COMPARED = "sizes differ (64x64 vs 128x128): not compared"


def record_job(session: Session, job: str, sides: list[int]) -> None:
    """A done job whose image i is a grey square of side sides[i]."""
    session.append({"type": "queued", "job": job, "spec": SPEC, "position": 0})
    session.images_dir.mkdir(parents=True, exist_ok=True)
    for i, side in enumerate(sides):
        path = session.images_dir / f"{job}-{i}.png"
        Image.new("RGB", (side, side), (100 + i, 100, 100)).save(path)
        session.append({"type": "image", "job": job, "image": i, "seed": 5 + i, "path": str(path),
                        "pixel_sha256": "x", "timings": {}, "peak_memory": None})
    session.append({"type": "done", "job": job, "timings": {}, "peak_memory": None})


def test_ab_pairs_of_different_sizes_are_not_compared_and_say_why(tmp_path):
    session = Session.open(tmp_path / "s")
    session.append({"type": "set", "set": "set-0001", "kind": "ab", "base": SPEC, "axes": [], "variants": [
        {"label": "A", "changes": {}, "cell": [0], "job": "job-0001"},
        {"label": "B", "changes": {"route": "final"}, "cell": [1], "job": "job-0002"}]})
    record_job(session, "job-0001", [64, 64])
    record_job(session, "job-0002", [128, 64])
    unequal, same = set_differences(session, "set-0001")
    assert unequal == {"image": 0, "seed": 5, "left": "A", "right": "B", "psnr_db": None, "phash_distance": None,
                       "note": NOT_COMPARED}
    assert (same["psnr_db"], same["phash_distance"], same["note"]) == (None, 0, "identical pixels")


def test_a_replayed_image_of_another_size_is_different_without_figures(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    Image.new("RGB", (128, 128), "red").save(tmp_path / "b.png")
    verdict = compare(tmp_path / "a.png", tmp_path / "b.png", Tolerance())
    assert (verdict.kind, verdict.psnr_db, verdict.max_difference, verdict.note) == (
        "different", None, None, NOT_COMPARED)
