"""Ideogram's generate endpoint (POST /generate, header Api-Key): the only provider that takes a
seed, so its images render again. Its answer holds URLs that expire: the worker fetches them at once."""

from __future__ import annotations

from typing import Any

from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.core.validation import check
from diffdeck.engines.hosted.providers.base import Answer, Picture, Provider, Shape

MODELS = ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")
_V1 = ("V_1", "V_1_TURBO")
_RATIOS = ((1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3), (16, 10), (10, 16), (3, 1), (1, 3))
SHAPES = tuple(Shape({"aspect_ratio": f"ASPECT_{w}_{h}"}, (w, h)) for w, h in _RATIOS)
MAGIC_PROMPT = ("AUTO", "ON", "OFF")
STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")


class Ideogram(Provider):
    def shapes(self, model: ModelSpec) -> tuple[Shape, ...]:
        return SHAPES

    def options(self, model: ModelSpec) -> dict[str, tuple[str, ...]]:
        styles = {} if model.source in _V1 else {"style_type": STYLES}  # V_2 and later
        return {"magic_prompt_option": MAGIC_PROMPT, **styles}

    def takes_negative_prompt(self, model: ModelSpec) -> bool:
        return model.source not in _V1

    def check_source(self, model: ModelSpec) -> None:
        check(model.source in MODELS, "source", f"{model.source!r} is not an Ideogram model; one of {', '.join(MODELS)}")

    def path(self, model: ModelSpec) -> str:
        return "/generate"

    def headers(self, key: str) -> dict[str, str]:
        return {"Api-Key": key}

    def body(self, model: ModelSpec, prompt: str, parameters: dict[str, Any], count: int,
             seed: int | None) -> dict[str, Any]:
        return {"image_request": {"prompt": prompt, "model": model.source, **parameters, "num_images": count,
                                  "seed": seed}}

    def answer(self, model: ModelSpec, body: Any) -> Answer:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise self.malformed(model, "a list of images")
        pictures, reasons = [], []
        for item in data:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str) or not url or item.get("is_image_safe") is False:
                reasons.append("ideogram marked the image unsafe (is_image_safe: false)")
                continue
            seed = item.get("seed")
            pictures.append(Picture(None, url, seed if isinstance(seed, int) else None))
        return Answer(tuple(pictures), None, tuple(reasons))


# One image a request: a request takes one seed, and each image's own seed is what renders it again
IDEOGRAM = Ideogram("ideogram", "Ideogram", "https://api.ideogram.ai", max_per_call=1, seeded=True,
                    max_seed=2**31 - 1, refusal_statuses=(422,))  # "Prompt failed the safety check"
