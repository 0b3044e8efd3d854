"""Train the built-in demo model from scratch on a CPU:

    python -m diffdeck.engines.demo.train --out engines/demo_model [--device cpu] [--seed 20261122]

Three stages, all on procedurally drawn scenes (`shapes`), every random draw from `--seed`:
1. an AutoencoderKL (64x64 RGB <-> 16x16x4 latents), trained for reconstruction, then checked:
   its reconstructions of drawn scenes must score as the evaluation's targets ask (`score.check`),
   or the run stops there rather than spend an hour on a UNet that could not draw them;
2. the dataset: scenes drawn, encoded once to latents, captions tokenized once;
3. a UNet2DConditionModel and a CLIPTextModel trained together to predict velocity (v, as SD 2.x
   does: unlike noise prediction it stays informative at the noisiest steps, where background and
   layout are decided), with 10 % of captions dropped (so classifier-free guidance works),
   weights averaged (EMA) for export.
Both losses weigh the shape and its surroundings SHAPE_WEIGHT times the rest of the background
(`shape_weights`): what tells a small star from a small circle is a few pixels.
The result is a StableDiffusionPipeline saved with `save_pretrained` as safetensors: the same
components and code path as a real SD 1.x/2.x checkpoint. Worker side: imports torch.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffdeck.engines.demo.score import ATTRIBUTES, TARGETS, check
from diffdeck.engines.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES, draw, random_scene
from diffdeck.engines.worker.previews import LATENT_RGB_FILE
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 20261122
TEXT_DIM = 64
MAX_TOKENS = 16  # the longest caption is 12 tokens with its start and end; the pipeline pads to this
CAPTION_DROP = 0.1
UNET_LR = 1e-3
VAE_STEPS = 2000
SHAPE_WEIGHT = 10.0
UNET_STEPS = 2800
BATCH = 64
SNAPSHOT_SECONDS = 600
BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def tokenizer() -> CLIPTokenizer:
    """A word-level CLIP BPE tokenizer: each word of the grammar is one token. The merges are
    learned as BPE learns them (most frequent pair first, on the grammar's words), so applying
    them in order spells every word whole; any other text falls back to letters."""
    words = ["a", "on", "background", ",", *SHAPES, *COLOURS, *SIZES, *POSITIONS]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges = []
    while any(len(p) > 1 for p in pieces):
        pairs: dict[tuple[str, str], int] = {}
        for p in pieces:
            for pair in zip(p, p[1:]):
                pairs[pair] = pairs.get(pair, 0) + 1
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # ties broken the same way every time
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        pieces = [_merge(p, best) for p in pieces]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _merge(pieces: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            out.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def text_encoder(vocab_size: int) -> CLIPTextModel:
    """A 2-layer CLIP text encoder whose token embeddings start at std 1, not CLIP's 0.02: at 0.02
    every word starts nearly the same, and a word no UNet layer uses yet gets no gradient to become
    different. A run that way never learned the position words: out of its encoder "left" and
    "right" were a norm of 1.0 apart (of 8.2), "circle" and "star" 7.9."""
    model = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_DIM, intermediate_size=128,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS,
        hidden_act="gelu"))
    model.get_input_embeddings().weight.data.normal_(0, 1.0)
    return model


def vae() -> AutoencoderKL:
    """4x downsampling: at 8x a small shape is two latent pixels across, and an 8x8x4 autoencoder
    of this size gave it back as a blurred blob of the wrong colour."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=8, sample_size=64)


def unet() -> UNet2DConditionModel:
    """16x16 latents down to 2x2: plain convolutions at 16x16 (attention there costs 2.4x a training
    step), cross-attention to the caption at 8x8, 4x4 and 2x2 in heads of 32 dimensions (diffusers'
    `attention_head_dim` is, for this model, the number of heads of each block)."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 96, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=(1, 2, 3, 4), norm_num_groups=16)


def downsampling(autoencoder: AutoencoderKL) -> int:
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


def images(scenes, rng: random.Random | None, device: str = "cpu") -> torch.Tensor:
    """Scenes drawn (with jitter, given `rng`) as a batch in [-1, 1]."""
    arrays = np.stack([np.asarray(draw(scene, rng), dtype=np.float32) for scene in scenes])
    return (torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1).to(device)


def shape_weights(x: torch.Tensor) -> torch.Tensor:
    """SHAPE_WEIGHT on the shape and within 3 px of it (pixels away from the corner's background
    colour, grown), 1 elsewhere: a small shape is a few percent of the image, and its colour and
    outline are what captions ask for. Grown, the weight covers a ring's hole and the gaps between a
    star's or a cross's arms; on the shape alone, half the small rings, stars and crosses came back
    as circles."""
    away = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.1
    near = F.max_pool2d(away.float(), 7, stride=1, padding=3)
    return 1 + (SHAPE_WEIGHT - 1) * near


def train_vae(model: AutoencoderKL, steps: int, rng: random.Random, log, device: str) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = images([random_scene(rng) for _ in range(32)], rng, device)
        posterior = model.encode(x).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        error = (reconstruction - x) ** 2 + 0.1 * (reconstruction - x).abs()
        loss = (shape_weights(x) * error).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    model.eval()


@torch.no_grad()
def reconstruction_accuracy(model: AutoencoderKL, rng: random.Random, device: str, count: int = 240) -> dict[str, float]:
    """Scenes drawn without jitter (half of them held-out pairs), encoded, decoded and scored."""
    scenes = [random_scene(rng, held_out=i % 2 == 1) for i in range(count)]
    decoded = model.decode(model.encode(images(scenes, None, device)).latent_dist.mean).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    checks = [check(Image.fromarray(array), scene) for array, scene in zip(pixels, scenes)]
    return {a: sum(c[a] for c in checks) / count for a in ATTRIBUTES}


def caption(scene, rng: random.Random) -> str:
    """The full caption most of the time; short forms too, so "a red circle" works."""
    keep = frozenset(part for part in ("size", "background", "position") if rng.random() < 0.8)
    return scene.caption(keep)


@torch.no_grad()
def dataset(model: AutoencoderKL, tok: CLIPTokenizer, count: int, rng: random.Random, log, device: str):
    """Latents (scaled to unit variance), their loss weights (`shape_weights` over each latent
    pixel's patch) and token ids of `count` scenes, and the scaling factor."""
    latents, weights, captions = [], [], []
    for start in range(0, count, 256):
        scenes = [random_scene(rng) for _ in range(min(256, count - start))]
        x = images(scenes, rng, device)
        latents.append(model.encode(x).latent_dist.mean)
        weights.append(F.max_pool2d(shape_weights(x), downsampling(model)).half())
        captions += [caption(scene, rng) for scene in scenes]
    latents, weights = torch.cat(latents), torch.cat(weights)
    scale = 1.0 / latents.std().item()
    ids = tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    ids, empty = ids.to(device), empty.to(device)
    log(f"dataset: {count} scenes, latent scale {scale:.4f}")
    return latents * scale, weights, ids, empty, scale


def velocity_loss(net: UNet2DConditionModel, x0: torch.Tensor, context: torch.Tensor, weights: torch.Tensor,
                  alphas: torch.Tensor) -> torch.Tensor:
    """The weighted v-prediction loss of a batch of latents at random timesteps."""
    t = torch.randint(0, 1000, (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    a = alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    velocity = a.sqrt() * noise - (1 - a).sqrt() * x0
    return (weights * (net(noisy, t, context).sample - velocity) ** 2).mean()


def train_unet(net: UNet2DConditionModel, encoder: CLIPTextModel, data, steps: int, log, snapshot=None):
    """Returns the averaged (EMA) UNet and text encoder. `snapshot(net, encoder)`, if given, is
    called with the averages every ten minutes, so a long run can be scored while it goes on."""
    latents, weights, ids, empty, _ = data
    noise_schedule = DDPMScheduler(num_train_timesteps=1000, **BETAS)
    alphas = noise_schedule.alphas_cumprod
    parameters = [*net.parameters(), *encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=UNET_LR, weight_decay=0.01)
    ema_net, ema_encoder = copy.deepcopy(net).eval(), copy.deepcopy(encoder).eval()
    ema_pairs = [*zip(ema_net.parameters(), net.parameters()), *zip(ema_encoder.parameters(), encoder.parameters())]
    net.train()
    encoder.train()
    start, batch = time.monotonic(), BATCH
    next_snapshot = start + SNAPSHOT_SECONDS
    for step in range(steps):
        for group in optimizer.param_groups:  # warm up, then a cosine down to a tenth
            group["lr"] = UNET_LR * min(1, (step + 1) / 200) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        pick = torch.randint(0, len(latents), (batch,), device=latents.device)
        x0, tokens = latents[pick], ids[pick].clone()
        tokens[torch.rand(batch, device=latents.device) < CAPTION_DROP] = empty
        loss = velocity_loss(net, x0, encoder(tokens).last_hidden_state, weights[pick], alphas.to(latents.device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, current in ema_pairs:
                average.lerp_(current, 1 - decay)
        if step % 200 == 0:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - start:.0f} s)")
        if snapshot and time.monotonic() > next_snapshot:
            snapshot(ema_net, ema_encoder)
            next_snapshot += SNAPSHOT_SECONDS
    log(f"unet: {steps} steps of {batch} in {time.monotonic() - start:.0f} s")
    return ema_net, ema_encoder


@torch.no_grad()
def write_latent_rgb(folder: Path, seed: int) -> None:
    """Fit the linear latent -> RGB map that step previews use (diffdeck.engines.worker.previews) to the saved
    autoencoder, by least squares on 512 drawn scenes, and write it next to the pipeline."""
    autoencoder = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    rng = random.Random(seed + 1)
    x = images([random_scene(rng) for _ in range(512)], rng)
    latents = autoencoder.encode(x).latent_dist.mean * autoencoder.config.scaling_factor
    inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, 5)
    targets = F.avg_pool2d(x, downsampling(autoencoder)).permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, targets).solution
    rows = [[round(value, 4) for value in row] for row in solution.tolist()]
    (folder / LATENT_RGB_FILE).write_text(json.dumps({"factors": rows[:4], "bias": rows[4]}) + "\n")


def load_text_encoder_in_float32(folder: Path) -> None:
    """transformers records the dtype a text encoder was saved in (half) as the one it loads in,
    where diffusers loads the UNet and autoencoder in float32: a plain `from_pretrained(folder)`
    would mix the two. A worker passes its own dtype to every component either way."""
    config = folder / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to save the pipeline in")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default: cpu; cuda trains in minutes)")
    parser.add_argument("--unet-steps", type=int, default=UNET_STEPS, help=f"default: {UNET_STEPS}")
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS, help=f"default: {VAE_STEPS}")
    parser.add_argument("--scenes", type=int, default=40000, help="scenes in the UNet's dataset")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--vae", type=Path, metavar="DIR",
                        help="an autoencoder this script trained before (a saved model's vae folder): skip stage 1")
    parser.add_argument("--no-gate", action="store_true",
                        help="go on to the UNet even if the autoencoder's reconstructions miss the targets")
    parser.add_argument("--snapshots", type=Path, metavar="DIR",
                        help="save the averaged weights here every ten minutes, to score a run as it goes")
    args = parser.parse_args(argv)
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:7.0f} s] {text}", flush=True)

    tok = tokenizer()
    # Each stage seeded on its own, so a run given stage 1's result (--vae) goes on as a full run would.
    torch.manual_seed(args.seed)
    if args.vae:
        autoencoder = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).to(args.device).eval()
    else:
        autoencoder = vae().to(args.device)
        train_vae(autoencoder, args.vae_steps, random.Random(args.seed), log, args.device)
    reconstructed = reconstruction_accuracy(autoencoder, random.Random(args.seed + 2), args.device)
    log("vae reconstructions: " + ", ".join(f"{a} {value:.0%}" for a, value in reconstructed.items()))
    missed = [a for a, target in TARGETS.items() if reconstructed[a] < target]
    if missed and not args.no_gate:
        raise SystemExit(f"the autoencoder's reconstructions miss the targets ({', '.join(missed)}): "
                         "train it longer (--vae-steps) before the UNet")
    data = dataset(autoencoder, tok, args.scenes, random.Random(args.seed + 3), log, args.device)
    autoencoder.register_to_config(scaling_factor=data[-1])

    def save(net: UNet2DConditionModel, encoder: CLIPTextModel, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # nothing of an earlier model stays behind
        scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="trailing", steps_offset=1,
                                           prediction_type="v_prediction", **BETAS)
        # Copies (training goes on), stored in half precision: half the bytes in the repository, and a
        # worker loads them in its own dtype.
        net, vae_copy, encoder = (copy.deepcopy(model).to("cpu", torch.float16) for model in (net, autoencoder, encoder))
        pipe = StableDiffusionPipeline(unet=net, vae=vae_copy, text_encoder=encoder, tokenizer=tok,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        load_text_encoder_in_float32(folder)
        log(f"saved {folder}")

    torch.manual_seed(args.seed + 4)
    net, encoder = train_unet(unet().to(args.device), text_encoder(len(tok)).to(args.device), data, args.unet_steps,
                              log, snapshot=args.snapshots and (lambda net, encoder: save(net, encoder, args.snapshots)))
    save(net, encoder, args.out)
    write_latent_rgb(args.out, args.seed)


if __name__ == "__main__":
    main()
