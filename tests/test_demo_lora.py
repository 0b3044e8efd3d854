"""The shipped demo LoRA teaches the demo model the word "striped": rendered by the real engine
(the Dispatcher, a demo worker, the LoRA loaded per job), the scorer reads the striped captions'
shapes as striped at weight 1 and not at weight 0 (the base model: the same prompts and seeds).
Margins, not pixels: a CPU's last-bit differences move a stripe's edge by a pixel, not a share
of eight images from one side of these bounds to the other."""

import asyncio
import json

import pytest
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.flows import Lora
from diffdeck.engines.core.registry import DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.demo.score import STRIPED, read, stripe_gaps
from diffdeck.engines.demo.shapes import STRIPED_LORA
from diffdeck.engines.queue.dispatcher import Dispatcher
from PIL import Image

PROMPTS = ["a striped red star on a blue background", "a striped yellow square on a black background",
           "a striped white circle on a purple background", "a striped green triangle on a pink background",
           "a striped blue cross on a yellow background", "a striped orange ring on a cyan background",
           "a striped black circle on a white background", "a striped pink square on a green background"]


def rendered(tmp_path, weight: float) -> list[Image.Image]:
    """Each prompt at seed 11 + its index, with the demo LoRA at `weight`."""
    async def go():
        async with Dispatcher(load_registry(None), tmp_path) as dispatcher:
            jobs = [dispatcher.submit(JobSpec(prompt=prompt, model="demo", seed=11 + i,
                                              loras=(Lora(str(STRIPED_LORA), weight),)))
                    for i, prompt in enumerate(PROMPTS)]
            done = [await dispatcher.wait(job.id) for job in jobs]
        assert all(job.status == Status.DONE for job in done), [job.error for job in done]
        return [Image.open(job.images[0]["path"]).convert("RGB") for job in done]
    return asyncio.run(go())


@pytest.mark.slow
def test_the_demo_lora_draws_stripes_at_weight_one_and_not_at_zero(tmp_path):
    for weight, least, most in ((0.0, 0, 1), (1.0, 6, 8)):
        images = rendered(tmp_path / str(weight), weight)
        striped = sum(read(image).pattern == "striped" for image in images)
        gaps = [round(stripe_gaps(image), 2) for image in images]
        assert least <= striped <= most, (weight, striped, gaps)
        if weight:
            assert sum(gaps) / len(gaps) > 1.5 * STRIPED, gaps
        else:
            assert sum(gaps) / len(gaps) < STRIPED / 2, gaps


def test_the_demo_lora_is_a_small_safetensors_file_for_the_demo_models_cross_attention():
    """What the submit-time check reads (the family test: attn2.to_k's input is the demo UNet's
    cross_attention_dim), in the form diffusers saves a LoRA."""
    with STRIPED_LORA.open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    to_k = [info["shape"] for name, info in tensors.items() if "attn2.to_k.lora_A" in name]
    cross = json.loads((DEMO_FOLDER / "unet" / "config.json").read_text())["cross_attention_dim"]
    assert to_k and all(shape[1] == cross for shape in to_k)
    assert all(name.startswith("unet.") for name in tensors) and STRIPED_LORA.stat().st_size < 2_000_000


@pytest.mark.slow
def test_a_short_training_run_saves_an_adapter_diffusers_loads_and_checks_it(tmp_path, capsys):
    from diffdeck.engines.demo.train_lora import main

    out = tmp_path / "loras" / "short.safetensors"
    main(["--out", str(out), "--steps", "2", "--scenes", "16", "--check-count", "2", "--threads", "1"])
    assert out.is_file() and "weight 1.00: striped" in capsys.readouterr().out
