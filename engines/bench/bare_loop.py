"""The baseline of `diffdeck bench`: a bare diffusers loop in one process, no diffdeck code
on the render path. Reads an image count per line on stdin, renders that many, and
answers with the seconds it took. Worker side: imports torch and diffusers.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import diffusers
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--spec", required=True, help="JSON: prompt, steps, guidance, width, height")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec, out = json.loads(args.spec), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(args.folder, dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    seed = 0

    def render(n: int) -> float:
        nonlocal seed
        start = time.perf_counter()
        for _ in range(n):
            seed += 1
            image = pipe(spec["prompt"], num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
                         width=spec["width"], height=spec["height"],
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
            image.save(out / f"bare-{seed}.png")
        return time.perf_counter() - start

    render(1)  # warm-up, as diffdeck's worker is warm
    print("ready", flush=True)
    for line in sys.stdin:
        print(render(int(line)), flush=True)


if __name__ == "__main__":
    main()
