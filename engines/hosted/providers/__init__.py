"""The hosted providers' APIs as plain data: `provider(kind)` for a model's `kind:` in models.yaml."""

from __future__ import annotations

from diffdeck.engines.core.registry import HOSTED_ENTRY_CHECKS
from diffdeck.engines.hosted.providers.base import (
    ERROR_KINDS,
    Answer,
    Call,
    Picture,
    Provider,
    ProviderError,
    Sent,
    Shape,
    retry_delay_s,
    shortened,
)
from diffdeck.engines.hosted.providers.gemini import GEMINI
from diffdeck.engines.hosted.providers.ideogram import IDEOGRAM
from diffdeck.engines.hosted.providers.imagen import IMAGEN
from diffdeck.engines.hosted.providers.openai import OPENAI

PROVIDERS: dict[str, Provider] = {p.kind: p for p in (IDEOGRAM, IMAGEN, GEMINI, OPENAI)}
HOSTED_ENTRY_CHECKS.update({kind: p.check_model for kind, p in PROVIDERS.items()})  # as models.yaml is read

__all__ = ["ERROR_KINDS", "PROVIDERS", "Answer", "Call", "Picture", "Provider", "ProviderError", "Sent", "Shape",
           "provider", "retry_delay_s", "shortened"]


def provider(kind: str) -> Provider:
    """The provider of a hosted model's kind (one of HOSTED_KINDS, checked when models.yaml is read)."""
    return PROVIDERS[kind]
