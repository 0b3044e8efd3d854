"""Train the demo LoRA on a CPU: a low-rank adapter for the built-in demo model that teaches it a
word it has never seen, "striped" (`shapes.PATTERNS`), and check it with the scorer:

    python -m diffdeck.engines.demo.train_lora --out engines/demo/loras/striped.safetensors
    python -m diffdeck.engines.demo.train_lora --check engines/demo/loras/striped.safetensors

(Not in engines/demo_model/: the model's identity hashes every weight file of its folder.)

The demo tokenizer has no such word: it spells "striped" in letter pieces (s, tri, p, e, d) whose
embeddings the base model never trained. The adapter (peft LoRA, rank RANK: 8 drew stripes on fewer shapes) sits on the UNet's
attention projections, which read those pieces from the text encoder's output, and on its
ResNet convolutions, which draw the stripes: the base model's 16x16 layers have no attention.
The text encoder is left as it is: an adapter on it too (its attention, rank 8) scored no better.
Half of each batch is plain scenes with their usual captions, so the adapter leaves prompts
without the word as they were. Same loss as the base model (`train`): v-prediction weighted
towards the shape. Every random draw from `--seed`; saved as diffusers saves a LoRA
(`save_lora_weights`: safetensors, "unet." keys in peft's lora_A/lora_B form), in half precision.
Worker side: imports torch.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER
from diffdeck.engines.demo import train
from diffdeck.engines.demo.score import read, stripe_gaps
from diffdeck.engines.demo.shapes import Scene, random_scene
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

SEED = 20261201
WORD = "striped"
RANK = 16
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
LR = 3e-3
STEPS = 600
BATCH = 32
SCENES = 2000  # of each kind, striped and plain
CHECK_SEED = 11


def load_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(DEMO_FOLDER, torch_dtype=torch.float32)


def caption(scene: Scene, rng: random.Random) -> str:
    """A plain scene's caption as the base model learned them; a striped one's without the size
    word (striped shapes are large), so it stays within the tokenizer's 16 tokens."""
    if scene.pattern is None:
        return train.caption(scene, rng)
    return scene.caption(frozenset(part for part in ("background", "position") if rng.random() < 0.8))


@torch.no_grad()
def dataset(pipe: StableDiffusionPipeline, count: int, rng: random.Random):
    """`count` striped and `count` plain scenes, interleaved: latents scaled as the model's, loss
    weights and token ids (as `train.dataset`)."""
    latents, weights, captions = [], [], []
    for start in range(0, 2 * count, 256):
        scenes = [random_scene(rng, pattern=WORD if i % 2 == 0 else None) for i in range(start, min(start + 256, 2 * count))]
        x = train.images(scenes, rng)
        latents.append(pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor)
        weights.append(torch.nn.functional.max_pool2d(train.shape_weights(x), train.downsampling(pipe.vae)))
        captions += [caption(scene, rng) for scene in scenes]
    ids = pipe.tokenizer(captions, padding="max_length", max_length=train.MAX_TOKENS, truncation=True,
                         return_tensors="pt").input_ids
    empty = pipe.tokenizer([""], padding="max_length", max_length=train.MAX_TOKENS, return_tensors="pt").input_ids[0]
    return torch.cat(latents), torch.cat(weights), ids, empty


def lora_config(targets: list[str]) -> LoraConfig:
    return LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets)


def train_adapter(pipe: StableDiffusionPipeline, data, steps: int, lr: float, log) -> None:
    """Adds the adapter to the pipeline's UNet and trains it (the base weights stay frozen)."""
    latents, weights, ids, empty = data
    net, encoder = pipe.unet, pipe.text_encoder
    net.requires_grad_(False)
    encoder.requires_grad_(False)
    net.add_adapter(lora_config(TARGETS))
    parameters = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    alphas = DDPMScheduler(num_train_timesteps=1000, **train.BETAS).alphas_cumprod
    net.train()
    start = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1, (step + 1) / 50)
        pick = torch.randint(0, len(latents), (BATCH,))
        x0, tokens = latents[pick], ids[pick].clone()
        tokens[torch.rand(BATCH) < train.CAPTION_DROP] = empty
        with torch.no_grad():
            context = encoder(tokens).last_hidden_state
        loss = train.velocity_loss(net, x0, context, weights[pick], alphas)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - start:.0f} s)")
    net.eval()


def save(pipe: StableDiffusionPipeline, out: Path) -> None:
    layers = {name: tensor.to(torch.float16) for name, tensor in get_peft_model_state_dict(pipe.unet).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out.parent, weight_name=out.name, unet_lora_layers=layers,
                                              unet_lora_adapter_metadata=lora_config(TARGETS).to_dict())


def check_scenes(count: int) -> list[Scene]:
    """Striped scenes of the whole world (trained and held-out shape/colour pairs, alternately)."""
    rng = random.Random(CHECK_SEED)
    return [random_scene(rng, held_out=i % 2 == 1, pattern=WORD) for i in range(count)]


@torch.no_grad()
def render(pipe: StableDiffusionPipeline, prompts: list[str], seed: int):
    generator = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=DEMO.defaults["steps"], guidance_scale=DEMO.defaults["guidance"],
                generator=generator).images


def scores(images, scenes: list[Scene]) -> dict[str, float]:
    """Share of images read as striped, mean stripe gaps, share whose colour and background are
    the caption's."""
    readings = [read(image) for image in images]
    return {"striped": float(np.mean([r.pattern == WORD for r in readings])),
            "gaps": float(np.mean([stripe_gaps(image) for image in images])),
            "colour": float(np.mean([r.colour == s.colour and r.background == s.background
                                     for r, s in zip(readings, scenes)]))}


def check(lora: Path, count: int, weights: tuple[float, ...] = (0.0, 1.0)) -> dict[float, dict[str, float]]:
    """The striped captions (short: "a striped red star on a blue background") rendered with the
    adapter at each weight, seeds CHECK_SEED + index, and scored."""
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name=WORD)
    scenes = check_scenes(count)
    prompts = [scene.caption(frozenset({"background"})) for scene in scenes]
    results = {}
    for weight in weights:
        pipe.set_adapters([WORD], [weight])
        results[weight] = scores(render(pipe, prompts, CHECK_SEED), scenes)
    return results


def report(results: dict[float, dict[str, float]], count: int) -> str:
    lines = [f"{count} striped captions: share read as striped, mean stripe gaps, share with colour+background right"]
    lines += [f"weight {w:4.2f}: striped {r['striped']:4.0%}  gaps {r['gaps']:.2f}  colour+background {r['colour']:4.0%}"
              for w, r in results.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="train, save the adapter here (.safetensors), then check it")
    action.add_argument("--check", type=Path, metavar="FILE", help="only check an adapter trained before")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"default: {STEPS}")
    parser.add_argument("--lr", type=float, default=LR, help=f"default: {LR}")
    parser.add_argument("--scenes", type=int, default=SCENES, help=f"striped scenes, and as many plain (default: {SCENES})")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--check-count", type=int, default=24, help="striped captions the check renders")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:5.0f} s] {text}", flush=True)

    if args.out:
        torch.manual_seed(args.seed)
        pipe = load_pipeline()
        data = dataset(pipe, args.scenes, random.Random(args.seed))
        log(f"dataset: {len(data[0])} scenes")
        train_adapter(pipe, data, args.steps, args.lr, log)
        save(pipe, args.out)
        log(f"saved {args.out}")
    weights = (0.0, 0.25, 0.5, 0.75, 1.0)
    print(report(check(args.out or args.check, args.check_count, weights), args.check_count))
    log("checked")


if __name__ == "__main__":
    main()
