"""Imagen on the Gemini API (POST /v1beta/models/{model}:predict, header x-goog-api-key): up to
four images a request, base64 in the answer; no seed there (Vertex AI only)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.hosted.providers.base import Answer, Picture, Provider, Shape

# The pixels each aspect ratio renders at (Imagen 4's model page)
SHAPES = tuple(Shape({"aspectRatio": f"{w}:{h}"}, (w, h), width, height) for (w, h), (width, height) in (
    ((1, 1), (1024, 1024)), ((3, 4), (896, 1280)), ((4, 3), (1280, 896)), ((9, 16), (768, 1408)),
    ((16, 9), (1408, 768))))
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")
GOOGLE_API = "https://generativelanguage.googleapis.com"


def google_headers(key: str) -> dict[str, str]:
    return {"x-goog-api-key": key}


def decoded(model: ModelSpec, provider: Provider, data: Any) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise provider.malformed(model, "an image that decodes (bad base64)") from None


class Imagen(Provider):
    def shapes(self, model: ModelSpec) -> tuple[Shape, ...]:
        return SHAPES

    def options(self, model: ModelSpec) -> dict[str, tuple[str, ...]]:
        return {"personGeneration": PERSON_GENERATION}

    def path(self, model: ModelSpec) -> str:
        return f"/v1beta/models/{model.source}:predict"

    def headers(self, key: str) -> dict[str, str]:
        return google_headers(key)

    def body(self, model: ModelSpec, prompt: str, parameters: dict[str, Any], count: int,
             seed: int | None) -> dict[str, Any]:
        # includeRaiReason: a filtered image comes back as the filter's reason, not left out
        return {"instances": [{"prompt": prompt}],
                "parameters": {"sampleCount": count, **parameters, "includeRaiReason": True}}

    def answer(self, model: ModelSpec, body: Any) -> Answer:
        predictions = body.get("predictions", []) if isinstance(body, dict) else None
        if not isinstance(predictions, list):
            raise self.malformed(model, "a list of predictions")
        pictures, reasons = [], []
        for item in predictions:
            if isinstance(item, dict) and item.get("bytesBase64Encoded"):
                pictures.append(Picture(decoded(model, self, item["bytesBase64Encoded"])))
            else:  # held back by the safety filter: the reason instead of the bytes
                reason = item.get("raiFilteredReason") if isinstance(item, dict) else None
                reasons.append(str(reason or "an image was filtered out without a reason given"))
        if not pictures and not reasons:  # every image filtered, and the filter's reasons not asked for
            reasons.append("no image came back (filtered by the provider's safety filter)")
        return Answer(tuple(pictures), None, tuple(reasons))


IMAGEN = Imagen("imagen", "Google", GOOGLE_API, max_per_call=4)
