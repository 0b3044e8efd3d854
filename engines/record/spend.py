"""What hosted images cost, added up: a job's and a session's as running totals kept in its
record (every image paid for counts, a retry's and a resumed job's too; a local image costs
nothing), and a day's from the user's spend ledger, `$XDG_STATE_HOME/diffdeck/spend.jsonl`
(default ~/.local/state/diffdeck): one JSON line per hosted image of a known price (date, session,
job, image, model, usd), appended as the image is recorded (O_APPEND, then fsync), never rewritten, shared
by every session of the user's, wherever its folder. A line cut short by a kill, or whose usd is
not a number of dollars, is skipped by readers; the next append starts a line of its own.

UI side: JSON only.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.validation import is_cost, is_int

LEDGER = "spend.jsonl"


@dataclass(frozen=True)
class Spent:
    """Money paid for hosted images: the known costs added up, and the images paid for, of which
    `unknown` were of a model whose price is not known (so the total is at least `usd`)."""

    usd: float = 0.0
    images: int = 0
    unknown: int = 0

    def paid(self, cost: Any) -> Spent:
        """With one more hosted image paid for, of `cost` (None: its price is not known)."""
        if is_cost(cost):
            return Spent(round(self.usd + cost, 6), self.images + 1, self.unknown)
        return Spent(self.usd, self.images + 1, self.unknown + 1)

    def __add__(self, other: Spent) -> Spent:
        return Spent(round(self.usd + other.usd, 6), self.images + other.images, self.unknown + other.unknown)

    def __bool__(self) -> bool:
        return self.images > 0

    def text(self) -> str:
        """"$0.10", or "at least $0.10 (2 images of unknown price)"."""
        if not self.unknown:
            return usd(self.usd)
        return f"at least {usd(self.usd)} ({self.unknown} image{'s' if self.unknown != 1 else ''} of unknown price)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_entry(cls, entry: Any) -> Spent | None:
        """A job's `spent` as its record keeps it; None for one that is not shaped so."""
        if not isinstance(entry, dict) or set(entry) != {f.name for f in fields(cls)}:
            return None
        counts = [entry["images"], entry["unknown"]]
        if not is_cost(entry["usd"]) or not all(is_int(n) and n >= 0 for n in counts) or counts[1] > counts[0]:
            return None
        return cls(float(entry["usd"]), *counts)


def job_spent(job: dict[str, Any]) -> Spent:
    """What a job (as a session's record holds it) has cost, every attempt's images counted."""
    return Spent.from_entry(job.get("spent")) or Spent()


def total(spends: Iterable[Spent]) -> Spent:
    return sum(spends, Spent())


def session_spent(jobs: Iterable[dict[str, Any]]) -> Spent:
    """What a session's jobs (as its record holds them) have cost."""
    return total(map(job_spent, jobs))


def ledger_path() -> Path:
    """The user's spend ledger: one for every session, so that a day's budget counts them all."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "diffdeck" / LEDGER


def today() -> str:
    """The day a cost counts in: the local date."""
    return datetime.date.today().isoformat()


@dataclass(frozen=True)
class Spend:
    """One hosted image's cost, as the ledger keeps it."""

    date: str
    session: str
    job: str
    image: int
    model: str
    usd: float

    @classmethod
    def from_line(cls, line: bytes) -> Spend | None:
        """The entry a line holds; None for one that is not whole (cut short by a kill), or whose usd
        is not a number of dollars (NaN, negative, true, too large for a float)."""
        try:
            spend = cls(**json.loads(line))
        except (ValueError, TypeError):
            return None
        return spend if isinstance(spend.date, str) and is_cost(spend.usd) else None


def record_spend(ledger: Path, spend: Spend) -> None:
    """Append one entry, in the OS and on disk when this returns. OSError when it cannot be written."""
    line = json.dumps(asdict(spend), separators=(",", ":")).encode() + b"\n"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ledger, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)  # read: its last byte
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":  # a line cut short: it stays alone on its line
            line = b"\n" + line
        rest = memoryview(line)
        while rest:
            rest = rest[os.write(fd, rest):]
        os.fsync(fd)
    finally:
        os.close(fd)


def day_spent(ledger: Path, day: str | None = None) -> float:
    """What hosted images recorded in `ledger` cost on `day` (default: today), in US dollars.
    OSError when the ledger exists and cannot be read."""
    return DayTally(ledger).spent(day or today())


class DayTally:
    """A ledger's total for one day, for a process that asks again and again (a budget checked at
    each submit): each ask reads only the whole lines added since the last; all of it again when
    the day changes, or the file is not the one read (replaced, or cut and written again). The
    ledger only grows: a year of it is megabytes."""

    def __init__(self, ledger: Path):
        self.ledger = ledger
        self._day: str | None = None
        self._read = b""  # the last whole line counted, where it was: the file is still the one read
        self._at = 0  # bytes of it counted
        self._usd = 0.0

    def spent(self, day: str) -> float:
        """OSError when the ledger exists and cannot be read."""
        try:
            with open(self.ledger, "rb") as file:
                file.seek(self._at - len(self._read))
                if day != self._day or file.read(len(self._read)) != self._read:
                    self._day, self._read, self._at, self._usd = day, b"", 0, 0.0
                    file.seek(0)
                data = file.read()
        except FileNotFoundError:
            self._day, self._read, self._at, self._usd = day, b"", 0, 0.0
            return 0.0
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written is counted once it ends
        if whole:
            self._at += len(whole)
            self._read = whole[whole.rfind(b"\n", 0, -1) + 1:]
        entries = (Spend.from_line(line) for line in whole.split(b"\n") if line.strip())
        self._usd += sum(entry.usd for entry in entries if entry is not None and entry.date == day)
        return round(self._usd, 6)
