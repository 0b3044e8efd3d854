"""Rebuild the built-in demo model: `python -m engines.build_demo`.

A tiny SD 1.x-shaped pipeline (UNet2DConditionModel, AutoencoderKL, CLIPTextModel and a
character-level CLIP tokenizer, Euler scheduler) with random weights drawn from a fixed
seed, saved as safetensors into engines/demo_model/. Its images are noise; what it proves
is the whole path a real SD checkpoint takes, offline, on a CPU, the same on every machine.
"""

import shutil

from .registry import DEMO_FOLDER
from .tinypipes import save

SEED = 20261121

if __name__ == "__main__":
    shutil.rmtree(DEMO_FOLDER, ignore_errors=True)
    save("sd", DEMO_FOLDER, seed=SEED)
    print(f"wrote {DEMO_FOLDER}")
