"""The hosted worker's HTTP side: a provider's calls sent with a timeout each, retried with backoff
on 429, 5xx, timeouts and dropped connections (honouring Retry-After, or Google's RetryInfo), and
the image URLs of an answer fetched at once. Async, so that a cancelled job drops its request: the connection closes.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, TypeVar

import httpx
from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.hosted.providers import Call, Provider, ProviderError, retry_delay_s

MAX_ATTEMPTS = 4
BACKOFF_S = 1.0  # the first wait; it doubles each attempt (1, 2, 4 s), jittered
MAX_WAIT_S = 60.0  # the longest wait between attempts, whatever Retry-After asks
CONNECT_TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    body: Any
    request_id: str | None


class Waiting:
    """What the request out is waiting for, in words, for the queue: "waiting for ideogram 12 s",
    "ideogram answered 429: retrying in 5 s (attempt 2 of 4)", or after no answer to a paid request
    "no answer from ideogram in 120 s: sending again in 2 s (attempt 2 of 4; the provider may bill both)"."""

    def __init__(self, kind: str):
        self.kind = kind
        self.since = time.monotonic()
        self._retries = 0  # waited for so far, in the worker's life
        self._retry: tuple[str, float, int, bool] | None = None  # why, until when, the next attempt, billed twice?

    def sending(self) -> None:
        self.since, self._retry = time.monotonic(), None

    def retrying(self, why: str, wait_s: float, attempt: int, billed_twice: bool = False) -> None:
        self._retries += 1
        self._retry = (why, time.monotonic() + wait_s, attempt, billed_twice)

    @property
    def retry(self) -> int | None:
        """Which retry is waited for now (the worker's count: a new one is a new line on a terminal), or None."""
        return None if self._retry is None else self._retries

    def text(self) -> str:
        now = time.monotonic()
        if self._retry is None:
            return f"waiting for {self.kind} {now - self.since:.0f} s"
        why, until, attempt, billed_twice = self._retry
        verb, note = ("sending again", "; the provider may bill both") if billed_twice else ("retrying", "")
        return f"{why}: {verb} in {math.ceil(max(0.0, until - now))} s (attempt {attempt} of {MAX_ATTEMPTS}{note})"


class Client:
    """One model's connection to its provider."""

    def __init__(self, model: ModelSpec, provider: Provider, waiting: Waiting):
        self.model, self.provider, self.waiting = model, provider, waiting
        self._http = httpx.AsyncClient(
            base_url=provider.base_url(model),  # no redirects: the key would follow them
            timeout=httpx.Timeout(model.timeout_s, connect=min(CONNECT_TIMEOUT_S, model.timeout_s)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Reply:
        """The answer to `call`, parsed JSON; ProviderError once it cannot be had."""
        response = await self._retried(
            lambda: self._http.request(call.method, call.path, headers=call.headers, json=call.json),
            lambda status, body: self.provider.error(self.model, status, body), paid=True)
        return Reply(_body(response), self.provider.request_id(response.headers))

    async def fetch(self, url: str) -> bytes:
        """An image an answer points at (Ideogram's URLs expire: fetched at once, without the key)."""
        response = await self._retried(lambda: self._http.get(url, follow_redirects=True), self._fetch_error,
                                       paid=False)
        return response.content

    def _fetch_error(self, status: int, body: Any) -> ProviderError:
        expired = " (the image URL expired)" if status in (403, 404, 410) else ""
        return ProviderError("provider", f"{self.provider.kind} answered {status} to the download of an image "
                                         f"for model {self.model.name!r}{expired}",
                             retryable=status == 429 or status >= 500)

    async def _retried(self, send: Callable[[], Awaitable[httpx.Response]],
                       error: Callable[[int, Any], ProviderError], paid: bool) -> httpx.Response:
        """`paid`: a request the provider bills, which it may bill twice when it is sent again after no answer."""
        kind, where = self.provider.kind, f"for model {self.model.name!r} ({self.model.source})"
        began, timeouts = time.monotonic(), 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.waiting.sending()
            retry_after, billed_twice = None, False
            try:
                response = await within(self.model.timeout_s, send())
            except (httpx.TimeoutException, asyncio.TimeoutError):
                timeouts += 1
                tries = f", {timeouts} times ({time.monotonic() - began:.0f} s in all)" if timeouts > 1 else ""
                failure = ProviderError("timeout", f"{kind} did not answer within {self.model.timeout_s:g} s{tries} "
                                                   f"{where}", retryable=True)
                why, billed_twice = f"no answer from {kind} in {self.model.timeout_s:g} s", paid
            except httpx.TransportError as e:
                failure = ProviderError("network", f"could not reach {kind} at {self._http.base_url} {where} "
                                                   f"({type(e).__name__})", retryable=True)
                why = f"{kind} could not be reached"
            else:
                if response.is_success:
                    return response
                body = _body(response)
                failure = error(response.status_code, body)
                why = f"{kind} answered {response.status_code}"
                retry_after = response.headers.get("retry-after") or retry_delay_s(body)
            if not failure.retryable or attempt == MAX_ATTEMPTS:
                raise failure
            wait_s = backoff(attempt, retry_after)
            self.waiting.retrying(why, wait_s, attempt + 1, billed_twice)
            await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")


async def within(seconds: float, request: Awaitable[T]) -> T:
    """`request`'s result, or asyncio.TimeoutError once `seconds` have passed in all (httpx's
    timeouts are per read: a provider trickling bytes never trips them). The request is dropped
    (its connection closed) when time is up or the job is cancelled. Not asyncio.wait_for: before
    Python 3.12 it swallows a cancel that comes as the request ends, and the job would go on."""
    task = asyncio.ensure_future(request)
    try:
        await asyncio.wait([task], timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        raise asyncio.TimeoutError
    return task.result()


def backoff(attempt: int, retry_after: str | float | None) -> float:
    """Seconds to wait before attempt `attempt` + 1: what the provider asks (Retry-After's seconds
    or HTTP date, or RetryInfo's seconds), else 1, 2, 4 s jittered; never more than MAX_WAIT_S."""
    asked = _retry_after_s(retry_after) if retry_after else None
    if asked is None:
        asked = BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
    return min(max(asked, 0.0), MAX_WAIT_S)


def _retry_after_s(value: str | float) -> float | None:
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
