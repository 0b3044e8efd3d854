"""JSON from outside the process (a PNG's record, a session's journal and job lines), parsed so
that no file can take the reader down: too deep a nesting is malformed JSON like any other.
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, raising ValueError for anything it cannot read, nesting deeper than Python's
    recursion limit included (json raises RecursionError there, which no reader expects). Nothing
    is changed before it returns, so a caller's state is whole either way."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None
