"""What a hosted image costs: the providers' published prices per image, with the date they were
read, unless the model's entry gives its own (`price_usd:` in models.yaml, which always wins: a
contract price, a proxy's, a provider's change). Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffdeck.engines.core.spec import ModelSpec

PRICES_READ = "2026-12-01"  # when the prices below were read from the providers' pricing pages

# provider kind -> model id -> USD per image. OpenAI's gpt-image-1 depends on quality and size:
# (quality, square) -> price, square meaning 1024x1024 and not square any other size.
_FLAT: dict[str, dict[str, float]] = {
    "ideogram": {"V_1": 0.06, "V_1_TURBO": 0.02, "V_2": 0.08, "V_2_TURBO": 0.05, "V_2A": 0.04, "V_2A_TURBO": 0.025},
    "imagen": {"imagen-4.0-fast-generate-001": 0.02, "imagen-4.0-generate-001": 0.04,
               "imagen-4.0-ultra-generate-001": 0.06},
    "gemini": {"gemini-2.5-flash-image": 0.039, "gemini-2.5-flash-image-preview": 0.039},
}
_GPT_IMAGE_1 = {("low", True): 0.011, ("low", False): 0.016, ("medium", True): 0.042, ("medium", False): 0.063,
                ("high", True): 0.167, ("high", False): 0.25}
_DALL_E_3 = {("standard", True): 0.04, ("standard", False): 0.08, ("hd", True): 0.08, ("hd", False): 0.12}


@dataclass(frozen=True)
class Price:
    usd: float | None  # per image; None: not known (an unknown model id without price_usd)
    source: str  # where it comes from, in words: "models.yaml" or "published prices read 2026-12-01"

    def of(self, images: int) -> float | None:
        return None if self.usd is None else round(self.usd * images, 6)

    def where(self) -> str:
        """Where the price comes from, in words; or how to give one that is not known."""
        if self.usd is None:
            return "its price is not known (give it price_usd: in models.yaml)"
        return "its price_usd in models.yaml" if self.source == "models.yaml" else self.source


def price(model: ModelSpec, width: int, height: int) -> Price:
    """The price of one image of `model` at the size sent (local models: 0)."""
    if not model.hosted:
        return Price(0.0, "local")
    if model.price_usd is not None:
        return Price(float(model.price_usd), "models.yaml")
    published = f"published prices read {PRICES_READ}"
    square = width == height
    if model.kind == "openai" and model.source == "gpt-image-1":
        quality = str(model.options.get("quality", "auto"))  # the API's default
        if quality == "auto":  # billed as the quality the API picks, which is not known before: the most
            return Price(_GPT_IMAGE_1[("high", square)], f"{published} (quality auto, priced as high: at most)")
        return Price(_GPT_IMAGE_1.get((quality, square)), published)
    if model.kind == "openai" and model.source == "dall-e-3":
        return Price(_DALL_E_3.get((str(model.options.get("quality", "standard")), square)), published)
    return Price(_FLAT.get(model.kind, {}).get(model.source), published)
