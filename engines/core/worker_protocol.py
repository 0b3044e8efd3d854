"""The wire between the Dispatcher and a worker: one JSON object per line.

Dispatcher -> worker:
  job       {id, spec (resolved JobSpec dict), out_dir, skip (image indices already made)}
            a leg of a flow adds stages: [first, last] (indices into spec.stages, all of this model)
            and inputs: {"<image index>": {"image": PNG, "pixel_sha256"} | {"latents": .safetensors}}
            (what the previous leg made, with its recorded pixels' hash, or the flow's init image)
  cancel    {id}
  shutdown  {}
  (end of input: the Dispatcher is gone; the worker cancels its job and exits within 2 s)

Worker -> Dispatcher:
  hello     {pid, model, device, dtype, environment}  as soon as the process starts
  ready     {load_s, family, pipeline_class, scheduler, settings, memory}   the model is loaded
  load_failed {error}                                  the model could not be loaded; exits
  step      {id, image, count, step, total, elapsed_s, it_s}   a leg's add stage, stages (the flow's count)
  preview   {id, image, step, mime, data (base64, <= 16 KB)}
  stage_image {id, stage, kind, model, image, seed, path, pixel_sha256, timings, peak_memory[, latents]}
            each stage but the flow's last; latents (a file, key "latents") for a refine in another worker
  image     {id, image, seed, path, pixel_sha256, timings, peak_memory}   a flow's last stage's image
  done      {id, timings, peak_memory}
  cancelled {id, step}
  failed    {id, error, kind: "error" | "oom" | "fatal"}   "fatal": the worker exits next

Paths, never pixels, except the small throttled previews.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PREVIEW_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class Intervals:
    """How often a worker reports on a running job, in seconds. A client redraws a few
    times a second; more messages only take CPU from the render."""

    progress_s: float = 0.1  # step messages; the last step of each image is always sent
    preview_s: float = 0.25

    def to_args(self) -> list[str]:
        return ["--progress-interval", str(self.progress_s), "--preview-interval", str(self.preview_s)]


class ProtocolError(ValueError):
    pass


def encode(message_type: str, /, **fields: Any) -> bytes:
    return (json.dumps({"type": message_type, **fields}, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not a JSON line: {line[:200]!r} ({e})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"message without a type: {line[:200]!r}")
    return message
