"""Make the committed example sessions again with the demo model, as a user would make them:

    python -m diffdeck.engines.demo.examples [--root sessions/examples]

- `demo-red-circle`: two images of one prompt, the session CI replays pixel for pixel;
- `demo-ab`: an A/B set (a red star against a blue one, same seeds) with its picks, a rating and
  its contact sheet, the picture the README shows;
- `demo-flow`: one prompt and seed through the `preview` route, then through `final` (the demo
  at 20 steps, then a 2x upscale pass): a flow's job with its stage image;
- `demo-lora`: a grid of striped captions over the demo LoRA's weight, 0 to 1 (`train_lora`), the
  README's picture of it.

The renders go through `diffdeck render` and `diffdeck ab`; the picks and the rating are written
as the compare view writes them. UI side: no torch here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from diffdeck.engines.demo.shapes import STRIPED_LORA
from diffdeck.engines.record.session import TIE, Session
from diffdeck.engines.sets.contact_sheet import contact_sheet

ROOT = Path(__file__).resolve().parents[2] / "sessions" / "examples"


def diffdeck(*args: str) -> None:
    # One torch thread, as the tests replay them: on a CPU, one thread's kernels and several
    # threads' differ in the last bit of a few pixels (PSNR 89 dB), and the examples must be identical.
    subprocess.run([sys.executable, "-m", "diffdeck.tui", *args], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def remake(root: Path) -> None:
    for name in ("demo-red-circle", "demo-ab", "demo-flow", "demo-lora"):
        shutil.rmtree(root / name, ignore_errors=True)
    diffdeck("render", "a large red circle on a blue background", "--seed", "1", "--count", "2",
             "--session", str(root / "demo-red-circle"))
    diffdeck("ab", "a large red star on a white background", "a large blue star on a white background",
             "--seed", "7", "--count", "2", "--session", str(root / "demo-ab"))
    session = Session.open(root / "demo-ab")
    (set_id, entry), = session.sets.items()
    a, b = (variant["job"] for variant in entry["variants"])
    session.pick(set_id, 0, a, b, winner=b)
    session.pick(set_id, 1, a, b, winner=TIE)
    session.rate(b, 0, 4)
    contact_sheet(session, set_id)  # again, now with the picks and the rating on it
    session.compact()
    Session.open(root / "demo-red-circle").compact()
    for route in ("preview", "final"):
        diffdeck("render", "a large red circle on a blue background", "--seed", "1", "--route", route,
                 "--session", str(root / "demo-flow"))
    Session.open(root / "demo-flow").compact()
    diffdeck("grid", "a striped red star on a blue background", "--lora", STRIPED_LORA.stem,
             "--x", "lora.weight=0..1 step 0.25", "--y", "prompt=red star -> yellow square, white circle, green cross",
             "--seed", "11", "--yes", "--session", str(root / "demo-lora"))
    Session.open(root / "demo-lora").compact()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help=f"where the examples go (default: {ROOT})")
    remake(parser.parse_args(argv).root)


if __name__ == "__main__":
    main()
