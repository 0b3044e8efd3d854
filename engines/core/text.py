"""Text from outside the program (a prompt, a session, a PNG, a models file, a daemon) made safe to
show on a terminal: nothing in it can move the cursor, set the title or the clipboard, or reorder
what is read around it. Plain data: the CLI and the workbench both use it.
"""

from __future__ import annotations

import unicodedata

# C0 controls and DEL have a picture of their own (U+2400 block), one cell wide like the rest
_PICTURES = {**{code: 0x2400 + code for code in range(0x20)}, 0x7F: 0x2421}
# Not printing, yet able to change what a terminal does or how the text around it reads: C0 and
# C1 controls, bidi overrides and isolates, zero-width and other format characters, line and
# paragraph separators, lone surrogates (undecodable bytes)
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def visible(text: str, newlines: bool = False, one_for_one: bool = False) -> str:
    """`text` with every control or otherwise invisible character shown as itself: C0 controls
    and DEL as control pictures (ESC as ␛), the rest as an escape (\\x9b, \\u202e), or with
    `one_for_one` as �, so that each character keeps its place (in a text being edited). With
    `newlines`, line breaks stay, for a display of several lines."""
    if text.isprintable() and text.isascii():
        return text  # the common case, at once
    return "".join(_shown(char, newlines, one_for_one) for char in text)


def _shown(char: str, newlines: bool, one_for_one: bool) -> str:
    if char == "\n" and newlines:
        return char
    code = ord(char)
    if code in _PICTURES:
        return chr(_PICTURES[code])
    if unicodedata.category(char) not in _HIDDEN:
        return char
    if one_for_one:
        return "\ufffd"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def counted(n: int, noun: str) -> str:
    """'1 job', '2 jobs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
