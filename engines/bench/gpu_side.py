"""The torch side of `diffdeck bench gpu` (`python -m diffdeck.engines.bench.gpu_side`): a process that
builds the pipelines and renders with bare diffusers, no diffdeck code on the render path. It is the
baseline diffdeck is measured against, renders the batching and the offload and dtype rows, runs mixed
models in one process as a script that keeps them all would, and holds the ballast that brings a GPU's
free memory down to a budget.

Requests one a line on stdin, {"type": NAME, ...}; one answer a line on stdout, {"type": "answer", "ok":
true, ...} or {"ok": false, "error": ...}; a `hello` first. A failed request leaves the
process serving. Worker side: imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import psutil
import torch
import transformers
from diffdeck.engines.bench import gpu_build, gpu_families
from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.core.worker_process import Wire, claim_stdout, die_with_parent
from diffdeck.engines.core.worker_protocol import decode
from diffdeck.engines.worker.diffusers_adapter import dtype_name, pick_dtype


class Side:
    def __init__(self):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = None
        self.family: str | None = None
        self.ballast: list[torch.Tensor] = []

    def hello(self) -> dict[str, Any]:
        gpu = torch.cuda.get_device_properties(0) if self.device == "cuda" else None
        return {"pid": os.getpid(), "device": self.device, "torch": torch.__version__, "cuda": torch.version.cuda,
                "gpu": gpu.name if gpu else None, "gpu_memory": gpu.total_memory if gpu else None}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.pop("type")
        try:
            return {"ok": True, **getattr(self, f"op_{op}")(**request)}
        except Exception as e:  # noqa: BLE001 - any failure is an answer; the next request is served
            failure = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self._free()  # outside the except block: its traceback no longer pins tensors
        return failure

    # requests

    def op_build(self, families: list[str], toy: bool, out: str) -> dict[str, Any]:
        """Each family's pipeline, or why it could not be built (the others are built all the same)."""
        built = {}
        for name in families:
            try:
                built[name] = gpu_build.build(gpu_families.load(name, toy), Path(out), self.device,
                                              log=lambda line, name=name: print(f"{name}: {line}", file=sys.stderr))
            except Exception as e:  # noqa: BLE001 - a config this diffusers cannot build, the disk: that family's row
                built[name] = {"problem": f"{type(e).__name__}: {e}"}
            self._free()
        return {"models": built}

    def op_load(self, folder: str, family: str, dtype: str = "auto", offload: str = "none") -> dict[str, Any]:
        self.op_unload()
        started = time.perf_counter()
        self.pipe, loaded = load_pipeline(folder, family, dtype, offload, self.device)
        self.family = family
        return {"load_s": round(time.perf_counter() - started, 3), "dtype": dtype_name(loaded)}

    def op_render(self, spec: dict[str, Any], seeds: list[int], out: str) -> dict[str, Any]:
        """One pipeline call an image, each saved as a PNG, as a script does."""
        self._reset_peak()
        started = time.perf_counter()
        for seed in seeds:
            render(self.pipe, self.family, spec, [seed])[0].save(Path(out) / f"bare-{seed}.png")
        return {"seconds": time.perf_counter() - started, "peak": self._peak()}

    def op_batching(self, spec: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
        """The images of `seeds` as one call each, then as one batched call (a warm-up call of the
        batch first): the time of each, the peak memory, and how the pixels compare."""
        self._reset_peak()
        started = time.perf_counter()
        singles = [np.asarray(render(self.pipe, self.family, spec, [seed])[0]) for seed in seeds]
        single_s, single_peak = time.perf_counter() - started, self._peak()
        render(self.pipe, self.family, {**spec, "steps": 2}, seeds)
        self._reset_peak()
        started = time.perf_counter()
        batched = [np.asarray(image) for image in render(self.pipe, self.family, spec, seeds)]
        batched_s, batched_peak = time.perf_counter() - started, self._peak()
        differences = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(singles, batched)]
        return {"single_s": single_s, "batched_s": batched_s, "single_peak": single_peak, "batched_peak": batched_peak,
                "images": len(seeds), "identical": sum(int(not d.any()) for d in differences),
                "max_difference": int(max(d.max() for d in differences)),
                "differing": float(np.mean([np.count_nonzero(d) / d.size for d in differences])),
                "uniform": all(int(a.min()) == int(a.max()) for a in singles)}

    def op_mixed(self, sequence: list[dict[str, Any]], out: str) -> dict[str, Any]:
        """Several models in this one process, an image each in turn, as a script that keeps every
        model it loaded does; on an out-of-memory error it drops the others and tries once more."""
        pipes: dict[str, Any] = {}
        images = [self._mixed_image(pipes, item, Path(out) / f"mixed-{i}.png") for i, item in enumerate(sequence)]
        pipes.clear()
        return {"images": images}

    def op_unload(self) -> dict[str, Any]:
        self.pipe = self.family = None
        self._free()
        return {}

    def op_ballast(self, leave_bytes: int) -> dict[str, Any]:
        """Hold all of the GPU's free memory but `leave_bytes` (in blocks of 1 GiB at most): what is left
        is the budget, for every process."""
        self.op_release()
        hold = torch.cuda.mem_get_info()[0] - leave_bytes
        while hold > 0:
            self.ballast.append(torch.empty(min(hold, 2**30), dtype=torch.uint8, device="cuda"))
            hold -= self.ballast[-1].numel()
        return {"held": sum(block.numel() for block in self.ballast), "free": torch.cuda.mem_get_info()[0]}

    def op_release(self) -> dict[str, Any]:
        self.ballast.clear()
        self._free()
        return {}

    # parts

    def _mixed_image(self, pipes: dict[str, Any], item: dict[str, Any], path: Path) -> dict[str, Any]:
        self._reset_peak()
        started, ooms, dropped, made = time.perf_counter(), 0, 0, False
        for _ in range(2):
            try:
                if item["folder"] not in pipes:
                    pipes[item["folder"]] = load_pipeline(item["folder"], item["family"], "auto", "none", self.device)[0]
                render(pipes[item["folder"]], item["family"], item["spec"], [item["seed"]])[0].save(path)
                made = True
            except torch.cuda.OutOfMemoryError:
                ooms += 1
            if made:
                break
            others = [folder for folder in pipes if folder != item["folder"]]
            for folder in others:
                del pipes[folder]
            dropped += len(others)
            self._free()
        cuda = self.device == "cuda"
        return {"family": item["family"], "seconds": time.perf_counter() - started, "made": made, "ooms": ooms,
                "dropped": dropped,
                "peak": self._peak(), "allocated": torch.cuda.memory_allocated() if cuda else None,
                "reserved": torch.cuda.memory_reserved() if cuda else None}

    def _reset_peak(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _peak(self) -> int:
        """torch's peak on a GPU since the reset; on a CPU, this process's RSS (as the worker reports)."""
        return torch.cuda.max_memory_allocated() if self.device == "cuda" else psutil.Process().memory_info().rss

    def _free(self) -> None:
        gpu_build.free_memory(self.device)


def load_pipeline(folder: str, family: str, dtype: str, offload: str, device: str):
    """The pipeline as diffusers' documentation loads one, in the dtype diffdeck's worker would pick
    (`dtype` auto) or the one named; the offload mode applies on a GPU. Returns it and its dtype."""
    torch_dtype = pick_dtype(ModelSpec("bench", folder, dtype=dtype), family, device)
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    if device == "cuda" and offload == "model":
        pipe.enable_model_cpu_offload()
    elif device == "cuda" and offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        pipe.to(device)
    return pipe, torch_dtype


def render(pipe, family: str, spec: dict[str, Any], seeds: list[int]):
    """The images of `seeds` in one call, each drawn from its own generator as diffdeck's worker seeds
    an image (so a batch starts from the same noise as its images one by one)."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    args = {"prompt": spec["prompt"], "num_inference_steps": spec["steps"], "guidance_scale": spec["guidance"],
            "width": spec["width"], "height": spec["height"], "num_images_per_prompt": len(seeds),
            "generator": generators[0] if len(generators) == 1 else generators}
    if family != "flux":  # guidance-distilled: no negative prompt
        args["negative_prompt"] = None
    return pipe(**args).images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffdeck.engines.bench.gpu_side")
    parser.add_argument("--parent", type=int, help="the pid of the process that started it: it dies with it")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    wire = Wire(claim_stdout())
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    side = Side()
    wire.send("hello", **side.hello())
    for line in sys.stdin:
        wire.send("answer", **side.answer(decode(line)))


if __name__ == "__main__":
    main()
