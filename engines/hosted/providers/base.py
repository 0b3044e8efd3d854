"""What every hosted provider is: plain data and pure functions from a job to the HTTP call that
renders it, and from the provider's answer to its pictures or to a classified error. No I/O here:
the hosted worker's client sends the calls; the Dispatcher calls `check` at submit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from diffdeck.engines.core.spec import DEFAULT_SCHEDULER, JobSpec, ModelSpec
from diffdeck.engines.core.text import visible
from diffdeck.engines.core.validation import check

# What a failed request was, as the worker reports it (failed {kind}) and the queue shows it
ERROR_KINDS = ("key", "quota", "refused", "unsupported", "provider", "timeout", "network")
MAX_SAID = 300  # characters of what a provider said that an error message keeps
MAX_ASPECT_ERROR = 1.25  # a size maps to the nearest shape a provider takes only this near its aspect ratio
# What says the quota is spent rather than the rate limited (a 429 says either, in any words): OpenAI's codes
# for it, and a Google QuotaFailure naming a daily quota (per-minute ones are rate limits)
_QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached")
_GOOGLE_DETAIL = "type.googleapis.com/google.rpc."
_REFUSAL_CODES = ("content_policy_violation", "moderation_blocked")
_REFUSAL_WORDS = ("safety", "responsible ai", "content policy")


class ProviderError(Exception):
    """A request that did not render. `kind` is one of ERROR_KINDS; `retryable`: worth sending
    again after a wait (a rate limit, a server error, a timeout, a dropped connection)."""

    def __init__(self, kind: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class Call:
    """One HTTP request, its path relative to the model's base URL."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


@dataclass(frozen=True)
class Shape:
    """A size or aspect ratio a provider takes: what is sent for it, and the pixels it returns
    (None where its API does not say)."""

    fields: dict[str, str]
    ratio: tuple[int, int]  # width:height
    width: int | None = None
    height: int | None = None

    @property
    def label(self) -> str:
        return f"{self.ratio[0]}:{self.ratio[1]}"


@dataclass(frozen=True)
class Sent:
    """The size a job's width and height were mapped to: the fields sent, the pixels expected."""

    fields: dict[str, str]
    width: int | None
    height: int | None


@dataclass(frozen=True)
class Picture:
    """One image of an answer: its bytes, or a URL to fetch them from at once; the seed the
    provider reports for it (None where it has none)."""

    data: bytes | None
    url: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Answer:
    pictures: tuple[Picture, ...]
    version: str | None = None  # the model version the answer reports
    reasons: tuple[str, ...] = ()  # why each image asked for and not returned was held back (a safety filter)


@dataclass(frozen=True)
class Provider:
    """One provider's API. Subclasses say what differs: the shapes, the options, the body, the answer."""

    kind: str
    name: str  # who runs it, as the record names it: "Ideogram", "Google", "OpenAI"
    default_base_url: str
    max_per_call: int
    seeded: bool = False  # sends each image's seed and renders the same image for it again
    max_seed: int | None = None
    refusal_statuses: tuple[int, ...] = ()  # answers that always mean a safety refusal
    request_id_headers: tuple[str, ...] = field(default=("x-request-id", "request-id"))

    # What differs between providers

    def shapes(self, model: ModelSpec) -> tuple[Shape, ...]:
        raise NotImplementedError

    def options(self, model: ModelSpec) -> dict[str, tuple[str, ...]]:
        """The options of models.yaml this model takes, with their allowed values."""
        return {}

    def defaults(self, model: ModelSpec) -> dict[str, str]:
        """Options sent when the model's entry gives none (where the API's own default is not wanted)."""
        return {}

    def takes_negative_prompt(self, model: ModelSpec) -> bool:
        return False

    def check_source(self, model: ModelSpec) -> None:
        """A model id the provider is known not to take (where its API names them all)."""

    def path(self, model: ModelSpec) -> str:
        raise NotImplementedError

    def headers(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def body(self, model: ModelSpec, prompt: str, parameters: dict[str, Any], count: int,
             seed: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, model: ModelSpec, body: Any) -> Answer:
        raise NotImplementedError

    # The same for every provider

    def images_per_call(self, model: ModelSpec) -> int:
        return self.max_per_call

    def parameters(self, model: ModelSpec, spec: JobSpec) -> dict[str, Any]:
        """What a request sends besides the prompt, the image count and the seed: the size's
        fields, the model's options, the negative prompt where there is one. The record keeps it."""
        negative = {"negative_prompt": spec.negative_prompt} if spec.negative_prompt else {}
        return {**self.size(model, spec.width, spec.height).fields, **self.defaults(model), **model.options, **negative}

    def check_model(self, model: ModelSpec) -> None:
        """The model's entry as this provider can take it: its model id and its options."""
        self.check_source(model)
        allowed = self.options(model)
        for name, value in model.options.items():
            known = ", ".join(allowed) or "none"
            check(name in allowed, f"options.{name}",
                  f"{self.title(model)} takes no option {name!r}; its options: {known}")
            hint = f' (quote it in models.yaml: "{"ON" if value else "OFF"}")' if isinstance(value, bool) else ""
            check(value in allowed[name], f"options.{name}",
                  f"{value!r} is not one of {', '.join(allowed[name])}{hint}")

    def check(self, model: ModelSpec, spec: JobSpec) -> None:
        """What this provider cannot take, refused at submit (SpecError): steps and guidance too,
        which are never sent (images that differ only by them would each be paid for)."""
        where = self.title(model)
        self.check_model(model)
        for name, are in (("steps", "steps are"), ("guidance", "guidance is")):
            check(getattr(spec, name) is None, name, f"{model.name} is hosted by {model.kind}: {are} not sent; "
                                                     f"leave {name} out")
        check(not spec.negative_prompt or self.takes_negative_prompt(model), "negative_prompt",
              f"{where} takes no negative prompt; leave it empty")
        check(not spec.loras, "loras", f"{where} is a hosted model: it takes no LoRAs")
        check(spec.flow is None and not spec.stages, "flow", f"{where} renders in one request: no flow or stages")
        check(spec.init_image is None, "init_image", f"{where} takes no init image")
        check(spec.scheduler == DEFAULT_SCHEDULER, "scheduler",
              f"{where} has no scheduler to choose; leave it at {DEFAULT_SCHEDULER}")
        if self.max_seed is not None:
            for seed in (*(spec.seeds or ()), *(() if spec.seed is None else (spec.seed,))):
                check(seed <= self.max_seed, "seed", f"{seed} is over {where}'s largest seed, {self.max_seed}")
        if spec.width is not None and spec.height is not None:
            self.size(model, spec.width, spec.height)

    def size(self, model: ModelSpec, width: int, height: int) -> Sent:
        """The shape this provider takes nearest to `width`x`height` (by aspect ratio), or a
        SpecError where none is near."""
        shapes = self.shapes(model)
        asked = math.log(width / height)
        best = min(shapes, key=lambda s: abs(math.log(s.ratio[0] / s.ratio[1]) - asked))
        off = math.exp(abs(math.log(best.ratio[0] / best.ratio[1]) - asked))
        check(off <= MAX_ASPECT_ERROR, "size",
              f"{width}x{height} is not near any aspect ratio {self.title(model)} takes "
              f"({', '.join(s.label for s in shapes)}); choose a size near one of them")
        return Sent(dict(best.fields), best.width, best.height)

    def request(self, model: ModelSpec, spec: JobSpec, first: int, count: int, key: str) -> Call:
        """The request for images first..first+count-1 of the job."""
        assert 1 <= count <= self.images_per_call(model), count
        seed = spec.seeds[first] if self.seeded else None
        body = self.body(model, spec.prompt, self.parameters(model, spec), count, seed)
        return Call("POST", self.path(model), self.headers(key), body)

    def error(self, model: ModelSpec, status: int, body: Any) -> ProviderError:
        """An answer other than 2xx, classified."""
        code, text = _error_fields(body)
        said = f": {shortened(text)}" if text else ""
        where = f"for model {model.name!r} ({model.source})"
        lowered = text.lower()
        if status in (401, 403) or "API_KEY_INVALID" in json.dumps(body) or "api key not valid" in lowered:
            return ProviderError("key", f"{self.kind} refused the key in ${model.api_key_env} {where}{said}")
        if status == 402 or code in _QUOTA_CODES or _daily_quota_spent(body):
            return ProviderError("quota", f"{self.kind} says the quota is spent {where}{said}")
        if status == 429:
            return ProviderError("provider", f"{self.kind} rate-limited the requests {where}{said}", retryable=True)
        if status == 408:
            return ProviderError("timeout", f"{self.kind} timed out {where}{said}", retryable=True)
        if status >= 500:
            return ProviderError("provider", f"{self.kind} failed ({status}) {where}{said}", retryable=True)
        if status in self.refusal_statuses or code in _REFUSAL_CODES or any(w in lowered for w in _REFUSAL_WORDS):
            return ProviderError("refused", f"{self.kind} refused the prompt {where}{said}")
        return ProviderError("unsupported", f"{self.kind} did not take the request ({status}) {where}{said}")

    def refused(self, model: ModelSpec, reason: str) -> ProviderError:
        return ProviderError("refused", f"{self.kind} refused the image for model {model.name!r} "
                                        f"({model.source}): {shortened(reason)}")

    def malformed(self, model: ModelSpec, what: str) -> ProviderError:
        """`what` may quote the answer: shortened, as all a provider says is."""
        return ProviderError("provider", f"{self.kind} answered without {shortened(what)} for model {model.name!r} "
                                         f"({model.source})")

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        return next((shortened(headers[h]) for h in self.request_id_headers if h in headers), None)

    def title(self, model: ModelSpec) -> str:
        return f"{self.kind} {model.source}"

    def base_url(self, model: ModelSpec) -> str:
        """Where the model's requests go: its entry's base_url, else the provider's."""
        return model.base_url or self.default_base_url


def shortened(text: str) -> str:
    """Untrusted text from a provider as one short line, without control characters."""
    line = visible(" ".join(str(text).split()))
    return line if len(line) <= MAX_SAID else line[: MAX_SAID - 1] + "…"


def retry_delay_s(body: Any) -> float | None:
    """The wait Google asks for in its error body (a RetryInfo's retryDelay, "5s"), or None."""
    for detail in _google_details(body, "RetryInfo"):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def _daily_quota_spent(body: Any) -> bool:
    """A Google QuotaFailure naming a quota per day."""
    return any("perday" in str(violation.get("quotaId", "")).lower()
               for detail in _google_details(body, "QuotaFailure")
               for violation in detail.get("violations") or () if isinstance(violation, dict))


def _google_details(body: Any, type_name: str) -> list[dict[str, Any]]:
    """The details of a Google error body of type google.rpc.`type_name`."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict) and d.get("@type") == _GOOGLE_DETAIL + type_name]


def _error_fields(body: Any) -> tuple[str, str]:
    """(code, message) from the error shapes the providers use: OpenAI's {error: {message, code}},
    Google's {error: {code, message, status}}, Ideogram's {detail} or {error}."""
    if isinstance(body, str):
        return "", body
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else error.get("status")
        return str(code or ""), str(error.get("message") or "")
    message = error if error is not None else body.get("detail", body.get("message", ""))
    return "", message if isinstance(message, str) else json.dumps(message)
