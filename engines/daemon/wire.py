"""What the engine daemon and its clients both speak: JSON lines, one object a line, and the calls
(DaemonCalls: the Engine's, and stopping the daemon). diffdeck.engines.daemon.server describes the
conversation.

A message longer than PAGE characters (a large session's hello, a whole image) goes as pages of
its JSON text, each line well under LINE_LIMIT: {"part": "..."} lines, then {"last": "..."}.

UI side: never imports torch.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from diffdeck.engines.core.jsontext import parse_json
from diffdeck.engines.service.engine import Engine

PROTOCOL = 2  # 2: messages past 1 MiB come as pages
LINE_LIMIT = 2**24  # what a reader takes as one line; a longer message goes as pages
PAGE = 2**20  # characters of JSON a line (at most twice as many once quoted: no more than 2 MiB)
MESSAGE_LIMIT = 2**30  # characters of one message, all its pages together


class DaemonError(Exception):
    """The daemon cannot be reached, refused the connection, or answered a call with an error."""


class DaemonCalls(Engine, Protocol):
    """What a client may ask of a daemon: what it may ask of any engine, and to stop it."""

    async def stop(self, now: bool = False) -> dict[str, Any]:
        """Stop after the running job (at once with `now`: it is queued again); how many jobs
        stay queued (`queued_left`) and the running ones' records (`running`)."""
        ...


def encode(message: dict[str, Any]) -> bytes:
    """A message as protocol lines: one line, or pages of its text when it is longer than PAGE."""
    text = json.dumps(message, separators=(",", ":"))
    if len(text) <= PAGE:
        return text.encode() + b"\n"
    pages = [text[start:start + PAGE] for start in range(0, len(text), PAGE)]
    return b"".join(_line({"part": page}) for page in pages[:-1]) + _line({"last": pages[-1]})


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, its pages joined; None at the end of the stream. ValueError for a line
    that is not a JSON object, or past LINE_LIMIT, or pages past MESSAGE_LIMIT."""
    pages, size = [], 0
    while line := await reader.readline():
        message = _read(line)
        page = message.get("part", message.get("last"))
        if page is None:
            if pages:
                raise ValueError("a message sent in pages was cut short")
            return message
        if not isinstance(page, str) or (size := size + len(page)) > MESSAGE_LIMIT:
            raise ValueError(f"a message sent in pages was not text, or longer than {MESSAGE_LIMIT:,} characters")
        pages.append(page)
        if "last" in message:
            return _read("".join(pages).encode())
    if pages:
        raise ValueError("a message sent in pages was cut short")
    return None


def _read(line: bytes) -> dict[str, Any]:
    try:
        message = parse_json(line)
    except ValueError:
        raise ValueError(f"not a line of JSON: {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise ValueError("a line must be one JSON object")
    return message
