"""Local fakes of the hosted image providers' HTTP APIs (OpenAI images, Imagen `:predict`, Gemini
image `:generateContent`, Ideogram `/generate`), so that no test reaches the network.

    with FakeProvider("ideogram", key="test-key") as fake:   # 127.0.0.1:<free port>, in a thread
        entry["base_url"] = fake.base_url
        fake.then(status(429, retry_after=1), ok())           # the next answers; after them ok() always
        ...
        fake.seen      # every request, image downloads too: Seen(method, path, headers, json, at)
        fake.dropped   # the requests whose client went away before their answer (a cancel, a timeout)

Each kind checks a request as its provider documents it, in the provider's order: the key first
(OpenAI and Ideogram: 401; Google: 400 INVALID_ARGUMENT with reason API_KEY_INVALID for a wrong key,
403 PERMISSION_DENIED for none, as generativelanguage.googleapis.com answers), then the path and
model, then every JSON field (known, of its type, one of its allowed values), answering in the
provider's error shape. Only a request that passes takes the next behaviour. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import select
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KINDS = ("openai", "imagen", "gemini", "ideogram")
TRICKLE_S = 0.05  # trickle(): seconds between two pieces of an answer


# --- behaviours -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Behaviour:
    what: str  # "ok", "status", "slow", "trickle", "refuse", "quota"
    images: int | None = None  # ok: how many pictures (None: as many as asked)
    code: int = 200
    body: Any = None  # status: a dict (sent as JSON), str or bytes (sent as is); None: the provider's shape
    message: str | None = None  # status: the provider's error shape around this message
    retry_after: float | str | None = None  # seconds, or an HTTP date
    headers: tuple[tuple[str, str], ...] = ()  # status: more response headers (a redirect's Location)
    seconds: float = 0.0
    then: Behaviour | None = None  # slow, trickle: what to answer
    reason: str = ""  # refuse: the provider's reason
    which: tuple[int, ...] | None = None  # refuse: only these pictures (Ideogram, Imagen); None: the request
    prompt: bool = False  # refuse, Gemini: the prompt blocked (promptFeedback) rather than the image


def ok(images: int | None = None) -> Behaviour:
    """Real, decodable images drawn from the prompt (and Ideogram's seed) at the size asked or the
    provider's size for the aspect ratio asked; `images`: answer this many instead of as many as asked."""
    return Behaviour("ok", images=images)


def status(code: int, body: Any = None, retry_after: float | str | None = None, *,
           message: str | None = None, headers: dict[str, str] | None = None) -> Behaviour:
    """An HTTP `code` with `body` (dict: JSON; str/bytes: as is), or the provider's error shape saying
    `message` (or what the provider says for the code); `retry_after` sets Retry-After (seconds or an
    HTTP date; Google's answers carry it as RetryInfo too); `headers`: more headers."""
    return Behaviour("status", code=code, body=body, message=message, retry_after=retry_after,
                     headers=tuple((headers or {}).items()))


def slow(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Answer after `seconds` (then `then`, default ok()); a client that closes before is recorded in `dropped`."""
    return Behaviour("slow", seconds=seconds, then=then)


def trickle(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Send `then` (default ok()) a few bytes every TRICKLE_S over `seconds`: no read waits long, the
    answer ends late; a client that closes before is recorded in `dropped`."""
    return Behaviour("trickle", seconds=seconds, then=then)


def refuse(reason: str, images: Sequence[int] | None = None, prompt: bool = False) -> Behaviour:
    """The provider's safety refusal, giving `reason`: OpenAI 400 content_policy_violation (DALL-E) or
    moderation_blocked (GPT image); Imagen a 200 whose pictures are filtered (raiFilteredReason when
    includeRaiReason was asked, else left out); Gemini a 200 with finishReason `reason` and no image
    (`prompt`: promptFeedback.blockReason and no candidate); Ideogram 422. `images`: only those
    pictures refused (Imagen filtered, Ideogram is_image_safe false), the rest answered."""
    return Behaviour("refuse", reason=reason, which=None if images is None else tuple(images), prompt=prompt)


def quota() -> Behaviour:
    """The provider's out-of-quota answer: OpenAI 429 insufficient_quota, Google 429
    RESOURCE_EXHAUSTED naming the quota, Ideogram 402."""
    return Behaviour("quota")


# --- what was seen ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # with its query string
    headers: dict[str, str]  # names lower-cased
    json: Any  # the parsed body, or None (no body, or not JSON)
    at: float  # time.monotonic() when it arrived


class Dropped(Exception):
    """The client closed its connection while its answer was being waited for."""


class Refusal(Exception):
    """A request the provider would refuse: its status, its body (in the provider's shape)."""

    def __init__(self, code: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(code)
        self.code, self.body, self.headers = code, body, headers or {}


@dataclass
class Asked:
    """A valid request, in the provider-independent terms an answer is made from."""
    prompt: str
    count: int
    width: int
    height: int
    seed: int | None = None
    mime: str = "image/png"
    as_url: bool = False  # OpenAI's response_format url (DALL-E's default)
    rai_reason: bool = False  # Imagen's includeRaiReason
    text: bool = False  # Gemini: TEXT among the response modalities
    model: str = ""  # Gemini: the model id in the path (the answer's modelVersion)
    body: dict = field(default_factory=dict)


# --- images (PNG and baseline JPEG, written here: the standard library has neither) -----------

CELL = 64  # pixels per side of one flat-coloured cell; a multiple of JPEG's 8x8 blocks


def cells(width: int, height: int, key: bytes) -> list[list[tuple[int, int, int]]]:
    """Rows of cell colours: a picture that depends only on `key` (prompt and seed or call)."""
    columns, rows = -(-width // CELL), -(-height // CELL)
    stream = b"".join(hashlib.sha256(key + i.to_bytes(4, "big")).digest()
                      for i in range(-(-columns * rows * 3 // 32)))
    return [[tuple(stream[(r * columns + c) * 3:(r * columns + c) * 3 + 3]) for c in range(columns)]
            for r in range(rows)]


def png(width: int, height: int, key: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = bytearray()
    for row in cells(width, height, key):
        line = b"\0" + b"".join(bytes(colour) * CELL for colour in row)[:width * 3]
        raw += line * min(CELL, height - len(raw) // len(line))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + \
        chunk(b"IEND", b"")


def _huffman(bits: Sequence[int], values: Sequence[int]) -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[k]] = (code, length)
            code, k = code + 1, k + 1
        code <<= 1
    return codes


_DC_BITS, _DC_VALUES = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), tuple(range(12))  # JPEG's table K.3
_AC_BITS, _AC_VALUES = (1,) + (0,) * 15, (0,)  # flat blocks need only end-of-block
_DC = _huffman(_DC_BITS, _DC_VALUES)


def jpeg(width: int, height: int, key: bytes) -> bytes:
    """A baseline JPEG of flat 8x8 blocks (DC only, quantiser 1): exact block colours, decodable anywhere."""
    grid = cells(width, height, key)
    out, acc, nbits = bytearray(), 0, 0

    def put(code: int, length: int) -> None:
        nonlocal acc, nbits
        acc, nbits = (acc << length) | code, nbits + length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.extend(b"\xff\x00" if byte == 0xFF else bytes((byte,)))
        acc &= (1 << nbits) - 1

    previous = [0, 0, 0]
    for by in range(-(-height // 8)):
        for bx in range(-(-width // 8)):
            r, g, b = grid[by * 8 // CELL][bx * 8 // CELL]
            ycc = (0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                   128 + 0.5 * r - 0.418688 * g - 0.081312 * b)
            for c, value in enumerate(ycc):
                dc = 8 * (round(value) - 128)
                diff, previous[c] = dc - previous[c], dc
                size = abs(diff).bit_length()
                put(*_DC[size])
                if size:
                    put(diff if diff > 0 else diff + (1 << size) - 1, size)
                put(0, 1)  # end of block
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)

    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data

    return b"".join((
        b"\xff\xd8", segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
        segment(0xDB, b"\0" + b"\x01" * 64),
        segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes((c, 0x11, 0)) for c in (1, 2, 3))),
        segment(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES) + b"\x10" + bytes(_AC_BITS) + bytes(_AC_VALUES)),
        segment(0xDA, b"\x03" + b"".join(bytes((c, 0x00)) for c in (1, 2, 3)) + b"\x00\x3f\x00"),
        bytes(out), b"\xff\xd9"))


def picture(asked: Asked, key: bytes) -> bytes:
    return (jpeg if asked.mime == "image/jpeg" else png)(asked.width, asked.height, key)


# --- checking JSON as a provider does ---------------------------------------------------------

Check = Callable[[str, Any], str | None]  # (name, value) -> what is wrong, or None


def is_str(values: Sequence[str] | None = None) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{name} must be a string"
        if values is not None and value not in values:
            return f"{name} must be one of {', '.join(values)}, not {value!r}"
        return None
    return check


def is_int(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} must be an integer"
        return None if low <= value <= high else f"{name} must be between {low} and {high}, not {value}"
    return check


def is_number(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{name} must be a number"
        return None if low <= value <= high else f"{name} must be between {low} and {high}"
    return check


def is_bool(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be a boolean"


def is_any(name: str, value: Any) -> str | None:
    return None


def fields(body: Any, where: str, known: dict[str, Check], required: Sequence[str] = ()) -> str | None:
    """What is wrong with the object `body` (at `where`) against `known` fields, or None."""
    if not isinstance(body, dict):
        return f"{where or 'the body'} must be a JSON object"
    for name in body:
        if name not in known:
            return f"unknown field {where + '.' if where else ''}{name}"
    for name in required:
        if name not in body:
            return f"missing required field {where + '.' if where else ''}{name}"
    for name, value in body.items():
        if (wrong := known[name](f"{where + '.' if where else ''}{name}", value)) is not None:
            return wrong
    return None


# --- the providers ----------------------------------------------------------------------------

class Kind:
    """One provider's API: its key check, its request check, its answers and error shapes."""
    name: str
    path: re.Pattern

    def check_key(self, headers: dict[str, str], query: dict[str, list[str]], key: str) -> None:
        raise NotImplementedError

    def check(self, match: re.Match, body: Any) -> Asked:
        raise NotImplementedError

    def answer(self, asked: Asked, pictures: list[bytes | None], reasons: list[str | None],
               urls: Callable[[bytes, str], str], seeds: list[int | None]) -> dict:
        raise NotImplementedError

    def error(self, code: int, message: str | None = None) -> Any:
        raise NotImplementedError

    def refusal(self, asked: Asked, reason: str) -> Refusal:
        raise NotImplementedError

    def quota(self) -> Refusal:
        raise NotImplementedError


MESSAGES = {400: "Bad request", 401: "Unauthorized", 402: "Payment required", 403: "Forbidden", 404: "Not found",
            408: "Request timeout", 409: "Conflict", 422: "Unprocessable", 429: "Too many requests",
            500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable", 504: "Gateway timeout"}


def size_of(text: str) -> tuple[int, int]:
    width, height = text.split("x")
    return int(width), int(height)


class OpenAI(Kind):
    """POST /v1/images/generations, Authorization: Bearer KEY (the OpenAI API reference, Images)."""
    name = "openai"
    path = re.compile(r"/v1/images/generations")
    GPT = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
    SIZES = {"gpt": ("1024x1024", "1536x1024", "1024x1536", "auto"),
             "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
             "dall-e-2": ("256x256", "512x512", "1024x1024")}
    QUALITIES = {"gpt": ("low", "medium", "high", "auto"), "dall-e-3": ("standard", "hd", "auto"),
                 "dall-e-2": ("standard", "auto")}

    def check_key(self, headers, query, key):
        given = headers.get("authorization")
        if given is None:
            raise Refusal(401, self.error(401, "You didn't provide an API key. You need to provide your API key in "
                                               "an Authorization header using Bearer auth (i.e. Authorization: "
                                               "Bearer YOUR_KEY)."))
        if given != f"Bearer {key}":
            raise Refusal(401, {"error": {"message": "Incorrect API key provided. You can find your API key at "
                                                     "https://platform.openai.com/account/api-keys.",
                                          "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})

    def invalid(self, message: str, param: str | None, code: str | None = "invalid_value") -> Refusal:
        return Refusal(400, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}})

    def check(self, match, body):
        if not isinstance(body, dict):
            raise self.invalid("We could not parse the JSON body of your request.", None, None)
        model = body.get("model", "dall-e-2")
        if model not in (*self.GPT, "dall-e-3", "dall-e-2"):
            raise self.invalid(f"Invalid value: '{model}'. Value must be one of gpt-image-1, dall-e-3, dall-e-2.",
                               "model")
        family = "gpt" if model in self.GPT else model
        gpt = family == "gpt"
        known: dict[str, Check] = {
            "prompt": is_str(), "model": is_str(), "n": is_int(1, 1 if model == "dall-e-3" else 10),
            "quality": is_str(self.QUALITIES[family]), "size": is_str(self.SIZES[family]), "user": is_str()}
        if gpt:
            known |= {"background": is_str(("transparent", "opaque", "auto")), "moderation": is_str(("low", "auto")),
                      "output_format": is_str(("png", "jpeg", "webp")), "output_compression": is_int(0, 100),
                      "stream": is_bool, "partial_images": is_int(0, 3)}
        else:
            known |= {"response_format": is_str(("url", "b64_json"))}
        if model == "dall-e-3":
            known |= {"style": is_str(("vivid", "natural"))}
        for name in body:
            if name not in known:
                raise self.invalid(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
        if "prompt" not in body:
            raise self.invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        for name, value in body.items():
            if (wrong := known[name](name, value)) is not None:
                raise self.invalid(f"Invalid value for '{name}': {wrong}.", name)
        limit = 32000 if gpt else 4000 if model == "dall-e-3" else 1000
        if len(body["prompt"]) > limit:
            raise self.invalid(f"Invalid 'prompt': string too long. Expected a string with maximum length {limit}.",
                               "prompt", "string_above_max_length")
        if body.get("output_format") == "webp":
            raise Refusal(501, self.error(501, "the fake cannot encode webp"))
        if "output_compression" in body and body.get("output_format", "png") == "png":
            raise self.invalid("output_compression is only supported for jpeg and webp output formats.",
                               "output_compression")
        size = body.get("size", "auto" if gpt else "1024x1024")
        width, height = size_of("1024x1024" if size == "auto" else size)
        return Asked(body["prompt"], body.get("n", 1), width, height,
                     mime="image/jpeg" if body.get("output_format") == "jpeg" else "image/png",
                     as_url=not gpt and body.get("response_format", "url") == "url", body=body)

    def answer(self, asked, pictures, reasons, urls, seeds):
        data = []
        for data_bytes in pictures:
            item: dict[str, Any] = ({"url": urls(data_bytes, "png")} if asked.as_url
                                    else {"b64_json": base64.b64encode(data_bytes).decode()})
            if asked.body.get("model") == "dall-e-3":
                item["revised_prompt"] = asked.prompt
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if asked.body.get("model") in self.GPT:
            answer["usage"] = {"total_tokens": 4160, "input_tokens": 50, "output_tokens": 4110,
                               "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}
        return answer

    RATE_LIMITED = ("Rate limit reached for images per minute (IPM): Limit 5, Used 5, Requested 1. Please try "
                    "again in 12s. Visit https://platform.openai.com/account/rate-limits to learn more.")

    def error(self, code, message=None):
        if code == 429:
            return {"error": {"message": message or self.RATE_LIMITED, "type": "requests", "param": None,
                              "code": "rate_limit_exceeded"}}
        return {"error": {"message": message or MESSAGES.get(code, "Error"),
                          "type": "server_error" if code >= 500 else "invalid_request_error", "param": None,
                          "code": None}}

    def refusal(self, asked, reason):
        code = "moderation_blocked" if asked.body.get("model") in self.GPT else "content_policy_violation"
        return Refusal(400, {"error": {"message": reason, "type": "image_generation_user_error", "param": None,
                                       "code": code}})

    def quota(self):
        return Refusal(429, {"error": {"message": "You exceeded your current quota, please check your plan and "
                                                  "billing details.", "type": "insufficient_quota", "param": None,
                                       "code": "insufficient_quota"}})


class Google(Kind):
    """generativelanguage.googleapis.com/v1beta: x-goog-api-key (or ?key=); errors {error: {code, message, status}}."""
    STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
              503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
    MODELS: tuple[str, ...] = ()
    method = ""

    def check_key(self, headers, query, key):
        given = headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        if given is None:
            raise Refusal(403, self.error(403, "Method doesn't allow unregistered callers (callers without established "
                                               "identity). Please use API Key or other form of API consumer identity "
                                               "to call this API."))
        if given != key:
            body = self.error(400, "API key not valid. Please pass a valid API key.")
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                         "reason": "API_KEY_INVALID",
                                         "domain": "googleapis.com",
                                         "metadata": {"service": "generativelanguage.googleapis.com"}}]
            raise Refusal(400, body)

    SAID = {429: "Resource has been exhausted (e.g. check quota).",  # what Google answers a rate limit with
            500: "An internal error has occurred. Please retry or report in "
                 "https://developers.generativeai.google/guide/troubleshooting",
            503: "The model is overloaded. Please try again later."}

    def error(self, code, message=None):
        return {"error": {"code": code, "message": message or self.SAID.get(code) or MESSAGES.get(code, "Error"),
                          "status": self.STATUS.get(code, "UNKNOWN")}}

    def invalid(self, wrong: str) -> Refusal:
        if wrong.startswith("unknown field "):
            where, _, name = wrong.removeprefix("unknown field ").rpartition(".")
            at = f" at '{where}'" if where else ""
            wrong = f"Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."
        return Refusal(400, self.error(400, wrong))

    def model(self, match: re.Match) -> str:
        model = match["model"]
        if model not in self.MODELS:
            raise Refusal(404, self.error(404, f"models/{model} is not found for API version v1beta, or is not "
                                               f"supported for {self.method}. Call ListModels to see the list of "
                                               "available models and their supported methods."))
        return model

    def quota(self):
        body = self.error(429, "You exceeded your current quota, please check your plan and billing details. For "
                               "more information on this error, head to: https://ai.google.dev/gemini-api/docs/"
                               "rate-limits.")
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
             "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]
        return Refusal(429, body)


class Imagen(Google):
    """POST /v1beta/models/{model}:predict, {instances: [{prompt}], parameters: {...}} (Gemini API, Imagen)."""
    name = "imagen"
    method = "predict"
    path = re.compile(r"/v1beta/models/(?P<model>[^/:]+):predict")
    MODELS = ("imagen-4.0-generate-001", "imagen-4.0-ultra-generate-001", "imagen-4.0-fast-generate-001",
              "imagen-4.0-generate-preview-06-06", "imagen-4.0-ultra-generate-preview-06-06", "imagen-3.0-generate-002")
    SIZES = {"1K": {"1:1": (1024, 1024), "3:4": (896, 1280), "4:3": (1280, 896), "9:16": (768, 1408),
                    "16:9": (1408, 768)},
             "2K": {"1:1": (2048, 2048), "3:4": (1792, 2560), "4:3": (2560, 1792), "9:16": (1536, 2816),
                    "16:9": (2816, 1536)}}

    def check(self, match, body):
        model = self.model(match)
        if (wrong := fields(body, "", {"instances": is_any, "parameters": is_any}, ("instances",))) is not None:
            raise self.invalid(wrong)
        instances = body["instances"]
        if not isinstance(instances, list) or len(instances) != 1:
            raise self.invalid("instances must hold exactly one instance")
        if (wrong := fields(instances[0], "instances[0]", {"prompt": is_str()}, ("prompt",))) is not None:
            raise self.invalid(wrong)
        known: dict[str, Check] = {
            "sampleCount": is_int(1, 4), "aspectRatio": is_str(tuple(self.SIZES["1K"])),
            "personGeneration": is_str(("dont_allow", "allow_adult", "allow_all")),
            "includeRaiReason": is_bool, "includeSafetyAttributes": is_bool, "outputOptions": is_any}
        if "fast" not in model:
            known["imageSize"] = is_str(("1K", "2K"))
        parameters = body.get("parameters", {})
        if (wrong := fields(parameters, "parameters", known)) is not None:
            raise self.invalid(wrong)
        options = parameters.get("outputOptions", {})
        if (wrong := fields(options, "parameters.outputOptions", {
                "mimeType": is_str(("image/png", "image/jpeg")), "compressionQuality": is_int(0, 100)})) is not None:
            raise self.invalid(wrong)
        width, height = self.SIZES[parameters.get("imageSize", "1K")][parameters.get("aspectRatio", "1:1")]
        return Asked(instances[0]["prompt"], parameters.get("sampleCount", 4), width, height,
                     mime=options.get("mimeType", "image/png"), rai_reason=parameters.get("includeRaiReason", False),
                     body=body)

    def answer(self, asked, pictures, reasons, urls, seeds):
        predictions = []
        for data, reason in zip(pictures, reasons, strict=True):
            if data is not None:
                predictions.append({"mimeType": asked.mime, "bytesBase64Encoded": base64.b64encode(data).decode()})
            elif asked.rai_reason:
                predictions.append({"raiFilteredReason": reason})
        return {"predictions": predictions} if predictions else {}  # all filtered, no reason asked: an empty answer

    def refusal(self, asked, reason):
        raise AssertionError("Imagen refuses inside a 200")


class Gemini(Google):
    """POST /v1beta/models/{model}:generateContent with responseModalities IMAGE (Gemini API, image generation)."""
    name = "gemini"
    method = "generateContent"
    path = re.compile(r"/v1beta/models/(?P<model>[^/:]+):generateContent")
    MODELS = ("gemini-2.5-flash-image", "gemini-2.5-flash-image-preview", "gemini-2.0-flash-preview-image-generation",
              "gemini-3-pro-image-preview")
    SIZES = {"1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184), "4:3": (1184, 864),
             "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344), "16:9": (1344, 768), "21:9": (1536, 672)}
    CONFIG: dict[str, Check] = {
        "responseModalities": is_any, "imageConfig": is_any, "candidateCount": is_int(1, 1),
        "temperature": is_number(0, 2), "topP": is_number(0, 1), "topK": is_int(1, 1000),
        "maxOutputTokens": is_int(1, 1 << 20), "seed": is_int(-(1 << 31), (1 << 31) - 1), "stopSequences": is_any,
        "presencePenalty": is_number(-2, 2), "frequencyPenalty": is_number(-2, 2)}

    def check(self, match, body):
        model = self.model(match)
        known = {"contents": is_any, "generationConfig": is_any, "safetySettings": is_any, "systemInstruction": is_any}
        if (wrong := fields(body, "", known, ("contents",))) is not None:
            raise self.invalid(wrong)
        contents = body["contents"]
        if not isinstance(contents, list) or not contents:
            raise self.invalid("contents is not specified")
        texts = []
        for i, content in enumerate(contents):
            where = f"contents[{i}]"
            if (wrong := fields(content, where, {"role": is_str(("user", "model")), "parts": is_any},
                                ("parts",))) is not None:
                raise self.invalid(wrong)
            if not isinstance(content["parts"], list) or not content["parts"]:
                raise self.invalid(f"{where}.parts must not be empty")
            for j, part in enumerate(content["parts"]):
                if (wrong := fields(part, f"{where}.parts[{j}]", {"text": is_str(), "inlineData": is_any})) is not None:
                    raise self.invalid(wrong)
                texts.append(part.get("text", ""))
        config = body.get("generationConfig", {})
        if (wrong := fields(config, "generation_config", self.CONFIG)) is not None:
            raise self.invalid(wrong)
        modalities = config.get("responseModalities", ["TEXT", "IMAGE"])
        if not isinstance(modalities, list) or not all(m in ("TEXT", "IMAGE") for m in modalities) or not modalities:
            raise self.invalid("generation_config.response_modalities must be a list of TEXT and IMAGE")
        image_config = config.get("imageConfig", {})
        image_known: dict[str, Check] = {"aspectRatio": is_str(tuple(self.SIZES))}
        if model.startswith("gemini-3"):
            image_known["imageSize"] = is_str(("1K", "2K", "4K"))
        if (wrong := fields(image_config, "generation_config.image_config", image_known)) is not None:
            raise self.invalid(wrong)
        width, height = self.SIZES[image_config.get("aspectRatio", "1:1")]
        if "IMAGE" not in modalities:
            return Asked(" ".join(texts), 0, width, height, text=True, model=model, body=body)
        return Asked(" ".join(texts), 1, width, height, text="TEXT" in modalities, model=model, body=body)

    def answer(self, asked, pictures, reasons, urls, seeds):
        parts: list[dict] = [{"text": "Here is the image."}] if asked.text else []
        parts += [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(data).decode()}}
                  for data in pictures if data is not None]
        return {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 1290, "totalTokenCount": 1298},
                "modelVersion": asked.model,
                "responseId": hashlib.sha256(b"".join(p or b"" for p in pictures)).hexdigest()[:22]}

    def refusal(self, asked, reason):
        raise AssertionError("Gemini refuses inside a 200")

    def refused(self, asked: Asked, behaviour: Behaviour) -> dict:
        if behaviour.prompt:
            return {"promptFeedback": {"blockReason": behaviour.reason}, "modelVersion": asked.model}
        return {"candidates": [{"finishReason": behaviour.reason, "index": 0}], "modelVersion": asked.model}


class Ideogram(Kind):
    """POST /generate, Api-Key: KEY, {image_request: {...}} (Ideogram API reference, Generate (legacy))."""
    name = "ideogram"
    path = re.compile(r"/generate")
    MODELS = ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")
    SIZES = {"ASPECT_1_1": (1024, 1024), "ASPECT_16_9": (1312, 736), "ASPECT_9_16": (736, 1312),
             "ASPECT_4_3": (1152, 864), "ASPECT_3_4": (864, 1152), "ASPECT_3_2": (1248, 832),
             "ASPECT_2_3": (832, 1248), "ASPECT_16_10": (1280, 800), "ASPECT_10_16": (800, 1280),
             "ASPECT_3_1": (1536, 512), "ASPECT_1_3": (512, 1536)}
    STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")

    def check_key(self, headers, query, key):
        if headers.get("api-key") != key:
            raise Refusal(401, self.error(401, "Not authorized"))

    def error(self, code, message=None):
        return {"error": message or MESSAGES.get(code, "Error")}

    def check(self, match, body):
        if (wrong := fields(body, "", {"image_request": is_any}, ("image_request",))) is not None:
            raise Refusal(400, self.error(400, wrong))
        request = body["image_request"]
        model = request.get("model", "V_2") if isinstance(request, dict) else None
        known: dict[str, Check] = {
            "prompt": is_str(), "model": is_str(self.MODELS), "aspect_ratio": is_str(tuple(self.SIZES)),
            "resolution": is_str(), "seed": is_int(0, 2147483647), "num_images": is_int(1, 8),
            "magic_prompt_option": is_str(("AUTO", "ON", "OFF")), "negative_prompt": is_str(),
            "color_palette": is_any}
        if model not in ("V_1", "V_1_TURBO"):
            known["style_type"] = is_str(self.STYLES)
        if (wrong := fields(request, "image_request", known, ("prompt",))) is not None:
            raise Refusal(400, self.error(400, wrong))
        if "aspect_ratio" in request and "resolution" in request:
            raise Refusal(400, self.error(400, "aspect_ratio and resolution cannot be used together"))
        if "resolution" in request:
            found = re.fullmatch(r"RESOLUTION_(\d+)_(\d+)", request["resolution"])
            if found is None or model not in ("V_2", "V_2_TURBO"):
                raise Refusal(400, self.error(400, f"image_request.resolution {request['resolution']!r} is not valid "
                                                   f"for {model}"))
            width, height = int(found[1]), int(found[2])
        else:
            width, height = self.SIZES[request.get("aspect_ratio", "ASPECT_1_1")]
        return Asked(request["prompt"], request.get("num_images", 1), width, height, seed=request.get("seed"),
                     body=body)

    def answer(self, asked, pictures, reasons, urls, seeds):
        request = asked.body["image_request"]
        data = []
        for data_bytes, seed in zip(pictures, seeds, strict=True):
            item = {"prompt": asked.prompt, "resolution": f"{asked.width}x{asked.height}",
                    "is_image_safe": data_bytes is not None, "seed": seed, "style_type": request.get("style_type")}
            if data_bytes is not None:
                item["url"] = urls(data_bytes, "png")
            data.append(item)
        return {"created": datetime.now(timezone.utc).isoformat(), "data": data}

    def refusal(self, asked, reason):
        return Refusal(422, self.error(422, reason))

    def quota(self):
        return Refusal(402, self.error(402, "Insufficient credits: add credits to your API account to continue."))


PROVIDERS: dict[str, Kind] = {kind.name: kind for kind in (OpenAI(), Imagen(), Gemini(), Ideogram())}


# --- the server -------------------------------------------------------------------------------

class FakeProvider:
    """An HTTP server on 127.0.0.1:<free port> speaking `kind`'s API, in a daemon thread."""

    def __init__(self, kind: str, key: str = "test-key", url_lifetime_s: float = 60.0, download_s: float = 0.0):
        """`download_s`: how long an image download (an Ideogram URL) waits before its answer."""
        if kind not in PROVIDERS:
            raise ValueError(f"no fake for {kind!r}: one of {', '.join(KINDS)}")
        self.kind, self.key, self.url_lifetime_s = PROVIDERS[kind], key, url_lifetime_s
        self.download_s = download_s
        self.seen: list[Seen] = []
        self.dropped: list[Seen] = []
        self._plan: deque[Behaviour] = deque()
        self._images: dict[str, tuple[bytes, str, float]] = {}  # token -> (data, content type, expires at)
        self._calls = itertools.count()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fake {kind}", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def then(self, *behaviours: Behaviour) -> FakeProvider:
        """Answer the next valid requests with `behaviours`, in order; after them ok() always."""
        with self._lock:
            self._plan.extend(behaviours)
        return self

    def requests(self) -> list[Seen]:
        """The API calls seen (not the image downloads)."""
        return [seen for seen in self.seen if self.kind.path.fullmatch(urlsplit(seen.path).path)]

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # what the handler calls

    def next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._plan.popleft() if self._plan else ok()

    def keep(self, data: bytes, suffix: str) -> str:
        token = hashlib.sha256(data + next(self._calls).to_bytes(8, "big")).hexdigest()[:32]
        content_type = "image/png" if suffix == "png" else "image/jpeg"
        with self._lock:
            self._images[token] = (data, content_type, time.monotonic() + self.url_lifetime_s)
        return f"{self.base_url}/ephemeral/{token}.{suffix}"

    def take(self, token: str) -> tuple[bytes, str] | None:
        """An image by its URL's token, once, before it expires."""
        with self._lock:
            data, content_type, expires = self._images.pop(token, (b"", "", 0.0))
        return (data, content_type) if time.monotonic() < expires else None

    def pictures(self, asked: Asked, behaviour: Behaviour) -> tuple[list[bytes | None], list[str | None], list]:
        count = asked.count if behaviour.images is None else behaviour.images
        refused = set(behaviour.which or ()) if behaviour.what == "refuse" else set()
        call = next(self._calls)
        pictures: list[bytes | None] = []
        seeds: list[int | None] = []
        for i in range(count):
            # Ideogram: the seed asked for the first picture, the next ones after it; unseeded: new every call
            seed = (asked.seed + i) % 2147483648 if asked.seed is not None else (
                int.from_bytes(hashlib.sha256(f"{call}/{i}".encode()).digest()[:4], "big") >> 1)
            key = f"{asked.prompt}\0{seed}".encode() if self.kind.name == "ideogram" else \
                f"{asked.prompt}\0{call}\0{i}".encode()
            seeds.append(seed if self.kind.name == "ideogram" else None)
            pictures.append(None if i in refused else picture(asked, key))
        return pictures, [behaviour.reason if i in refused else None for i in range(count)], seeds


def _handler(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        pace_s = 0.0  # the next answer is sent over this many seconds (trickle)

        def log_message(self, format: str, *args) -> None:  # quiet: pytest shows what matters
            pass

        def do_GET(self) -> None:
            seen = self.record(None)
            if not self.wait(fake.download_s):
                return self.drop(seen)
            found = re.fullmatch(r"/ephemeral/([0-9a-f]{32})\.\w+", urlsplit(self.path).path)
            image = fake.take(found[1]) if found else None
            if image is None:
                self.send(410 if found else 404, {"error": "the image URL has expired" if found else "not found"},
                          seen=seen)
            else:
                self.send(200, image[0], content_type=image[1], seen=seen)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = ValueError
            seen = self.record(None if body is ValueError else body)
            try:
                self.send(200, self.serve(body, seen), seen=seen)
            except Refusal as refusal:
                self.send(refusal.code, refusal.body, headers=refusal.headers, seen=seen)
            except Dropped:
                self.drop(seen)

        def record(self, body: Any) -> Seen:
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        time.monotonic())
            with fake._lock:
                fake.seen.append(seen)
            return seen

        def serve(self, body: Any, seen: Seen) -> Any:
            kind = fake.kind
            parts = urlsplit(self.path)
            match = kind.path.fullmatch(parts.path)
            kind.check_key(seen.headers, parse_qs(parts.query), fake.key)
            if match is None:
                raise Refusal(404, kind.error(404, f"no such endpoint: POST {parts.path}"))
            if body is ValueError:
                raise Refusal(400, kind.error(400, "the body is not valid JSON"))
            asked = kind.check(match, body)
            return self.behave(asked, fake.next_behaviour(), seen)

        def behave(self, asked: Asked, behaviour: Behaviour, seen: Seen) -> Any:
            kind = fake.kind
            if behaviour.what == "slow":
                if not self.wait(behaviour.seconds):
                    raise Dropped
                return self.behave(asked, behaviour.then or ok(), seen)
            if behaviour.what == "trickle":
                self.pace_s = behaviour.seconds
                return self.behave(asked, behaviour.then or ok(), seen)
            if behaviour.what == "status":
                after = behaviour.retry_after
                headers = {} if after is None else {"Retry-After": after if isinstance(after, str) else f"{after:g}"}
                body = behaviour.body if behaviour.body is not None else kind.error(behaviour.code, behaviour.message)
                if isinstance(kind, Google) and behaviour.body is None and isinstance(after, int | float):
                    body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                 "retryDelay": f"{after:g}s"}]
                raise Refusal(behaviour.code, body, {**headers, **dict(behaviour.headers)})
            if behaviour.what == "quota":
                raise kind.quota()
            if behaviour.what == "refuse" and behaviour.which is None:
                if isinstance(kind, Gemini):
                    return kind.refused(asked, behaviour)
                if not isinstance(kind, Imagen):
                    raise kind.refusal(asked, behaviour.reason)
                behaviour = Behaviour("refuse", reason=behaviour.reason, which=tuple(range(asked.count)))
            pictures, reasons, seeds = fake.pictures(asked, behaviour)
            return kind.answer(asked, pictures, reasons, fake.keep, seeds)

        def wait(self, seconds: float) -> bool:
            """Wait `seconds`; False as soon as the client closes its end (nothing more to read, EOF)."""
            deadline = time.monotonic() + seconds
            connection: socket.socket = self.connection
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([connection], [], [], min(left, 0.05))
                if readable:
                    try:
                        if connection.recv(1, socket.MSG_PEEK) == b"":
                            return False
                    except OSError:
                        return False
                    time.sleep(min(left, 0.05))  # bytes of a next request on this connection: not a close
            return True

        def send(self, code: int, body: Any, *, seen: Seen, content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
            if isinstance(body, dict | list):
                data, content_type = json.dumps(body).encode(), "application/json"
            else:
                data = body.encode() if isinstance(body, str) else body
                content_type = content_type or "text/plain; charset=utf-8"
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if fake.kind.name == "openai":
                    self.send_header("x-request-id", f"req_{hashlib.sha256(repr(seen).encode()).hexdigest()[:24]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                pieces, self.pace_s = max(1, int(self.pace_s / TRICKLE_S)), 0.0
                size = -(-len(data) // pieces) or 1
                for at in range(0, len(data), size):
                    if at:
                        time.sleep(TRICKLE_S)
                    self.wfile.write(data[at:at + size])
                    self.wfile.flush()
            except OSError:  # the client went away before its answer
                self.drop(seen)

        def drop(self, seen: Seen) -> None:
            with fake._lock:
                fake.dropped.append(seen)
            self.close_connection = True

    return Handler
