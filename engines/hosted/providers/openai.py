"""OpenAI's images API (POST /v1/images/generations, Authorization: Bearer): gpt-image-1 and its
kin, and dall-e-3 (one image a request, its own sizes and options). base64 answers; no seed."""

from __future__ import annotations

from math import gcd
from typing import Any

from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.core.validation import check
from diffdeck.engines.hosted.providers.base import Answer, Picture, Provider, Shape
from diffdeck.engines.hosted.providers.imagen import decoded

DALL_E_3 = "dall-e-3"


def _sizes(*sizes: tuple[int, int]) -> tuple[Shape, ...]:
    return tuple(Shape({"size": f"{w}x{h}"}, (w // gcd(w, h), h // gcd(w, h)), w, h) for w, h in sizes)


GPT_IMAGE_SIZES = _sizes((1024, 1024), (1536, 1024), (1024, 1536))
DALL_E_3_SIZES = _sizes((1024, 1024), (1792, 1024), (1024, 1792))
GPT_IMAGE_OPTIONS = {"quality": ("low", "medium", "high", "auto"), "background": ("transparent", "opaque", "auto"),
                     "moderation": ("low", "auto")}
DALL_E_3_OPTIONS = {"quality": ("standard", "hd"), "style": ("vivid", "natural")}


class OpenAI(Provider):
    def shapes(self, model: ModelSpec) -> tuple[Shape, ...]:
        return DALL_E_3_SIZES if model.source == DALL_E_3 else GPT_IMAGE_SIZES

    def options(self, model: ModelSpec) -> dict[str, tuple[str, ...]]:
        return DALL_E_3_OPTIONS if model.source == DALL_E_3 else GPT_IMAGE_OPTIONS

    def defaults(self, model: ModelSpec) -> dict[str, str]:
        return {"quality": "standard" if model.source == DALL_E_3 else "auto"}

    def images_per_call(self, model: ModelSpec) -> int:
        return 1 if model.source == DALL_E_3 else self.max_per_call

    def check_source(self, model: ModelSpec) -> None:
        check(not model.source.startswith("dall-e-2"), "source",
              f"{model.source!r} is not supported; use {DALL_E_3} or gpt-image-1")

    def path(self, model: ModelSpec) -> str:
        return "/v1/images/generations"

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def body(self, model: ModelSpec, prompt: str, parameters: dict[str, Any], count: int,
             seed: int | None) -> dict[str, Any]:
        # gpt-image models always answer base64 and refuse response_format; dall-e-3 answers URLs unless asked
        encoding = {"response_format": "b64_json"} if model.source == DALL_E_3 else {}
        return {"model": model.source, "prompt": prompt, "n": count, **parameters, **encoding}

    def answer(self, model: ModelSpec, body: Any) -> Answer:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data:
            raise self.malformed(model, "a list of images")
        pictures = []
        for item in data:
            if not isinstance(item, dict) or not (item.get("b64_json") or item.get("url")):
                raise self.malformed(model, "an image in each item of its data")
            pictures.append(Picture(decoded(model, self, item["b64_json"]) if item.get("b64_json") else None,
                                    None if item.get("b64_json") else str(item["url"])))
        return Answer(tuple(pictures))


OPENAI = OpenAI("openai", "OpenAI", "https://api.openai.com", max_per_call=10)
