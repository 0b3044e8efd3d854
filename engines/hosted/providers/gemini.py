"""Gemini's image models ("Nano Banana", POST /v1beta/models/{model}:generateContent with
responseModalities IMAGE, header x-goog-api-key): one image a request, in the answer's parts."""

from __future__ import annotations

from typing import Any

from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.hosted.providers.base import Answer, Picture, Provider, Shape, shortened
from diffdeck.engines.hosted.providers.imagen import GOOGLE_API, decoded, google_headers

# The pixels each aspect ratio renders at (gemini-2.5-flash-image's page)
SHAPES = tuple(Shape({"aspectRatio": f"{w}:{h}"}, (w, h), width, height) for (w, h), (width, height) in (
    ((1, 1), (1024, 1024)), ((2, 3), (832, 1248)), ((3, 2), (1248, 832)), ((3, 4), (864, 1184)),
    ((4, 3), (1184, 864)), ((4, 5), (896, 1152)), ((5, 4), (1152, 896)), ((9, 16), (768, 1344)),
    ((16, 9), (1344, 768)), ((21, 9), (1536, 672))))
# finishReason values that mean the image was held back
REFUSALS = ("SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
            "RECITATION", "IMAGE_RECITATION")


class Gemini(Provider):
    def shapes(self, model: ModelSpec) -> tuple[Shape, ...]:
        return SHAPES

    def path(self, model: ModelSpec) -> str:
        return f"/v1beta/models/{model.source}:generateContent"

    def headers(self, key: str) -> dict[str, str]:
        return google_headers(key)

    def body(self, model: ModelSpec, prompt: str, parameters: dict[str, Any], count: int,
             seed: int | None) -> dict[str, Any]:
        return {"contents": [{"parts": [{"text": prompt}]}],
                "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": parameters}}

    def answer(self, model: ModelSpec, body: Any) -> Answer:
        """The image parts of the first candidate; a refusal (a blocked prompt, a held-back image)
        raises ProviderError "refused" with the provider's reason."""
        if not isinstance(body, dict):
            raise self.malformed(model, "a JSON object")
        blocked = _mapping(body.get("promptFeedback")).get("blockReason")
        if blocked:
            raise self.refused(model, f"the prompt was blocked ({blocked})")
        candidates = body.get("candidates")
        candidate = _mapping(candidates[0] if isinstance(candidates, list) and candidates else None)
        reason = candidate.get("finishReason")
        if reason in REFUSALS:
            said = candidate.get("finishMessage")
            raise self.refused(model, f"{reason}: {said}" if said else str(reason))
        parts = _mapping(candidate.get("content")).get("parts")
        parts = [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []
        pictures = [Picture(decoded(model, self, part["inlineData"].get("data"))) for part in parts
                    if isinstance(part.get("inlineData"), dict)]
        if not pictures:
            text = " ".join(str(part.get("text", "")) for part in parts).strip()
            raise self.malformed(model, f"an image (finishReason {reason}" + (f"; it said: {text})" if text else ")"))
        version = body.get("modelVersion")
        return Answer(tuple(pictures), shortened(version) if isinstance(version, str) else None)


def _mapping(value: Any) -> dict[str, Any]:
    """A part of the answer that should be an object, or {} where it is not (a hostile or broken answer)."""
    return value if isinstance(value, dict) else {}


GEMINI = Gemini("gemini", "Google", GOOGLE_API, max_per_call=1)
