"""Session folders: `sessions/<name>/` with a YAML record, an append-only journal and `images/`.

    session.yaml    the snapshot: format, name, created, models seen, jobs (human-readable)
    journal.jsonl   one JSON line per event since the snapshot, appended as it happens
    images/         the PNGs, each with its full record in a text chunk

Saving an event costs one appended line whatever the session's size; `compact()` folds the
journal into the snapshot. Applying an event is idempotent, so a crash between writing the
snapshot and emptying the journal replays events the snapshot already holds, harmlessly.
A last journal line cut short by a kill is ignored; everything before it is kept.
Every path in the record is relative to the folder. UI side: YAML and JSON only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

FORMAT = 1
DEFAULT_ROOT = Path("sessions")
RECORD = "session.yaml"
JOURNAL = "journal.jsonl"
# Dispatcher events that change the record; progress, previews and telemetry do not.
RECORDED_EVENTS = ("queued", "started", "image", "done", "failed", "cancelled", "held", "worker_ready")


class SessionError(Exception):
    """A session folder that cannot be read as it is. Nothing in it has been changed."""


def new_session_dir(root: Path = DEFAULT_ROOT) -> Path:
    """A fresh, not yet existing folder under `root`, named by the local time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = root / stamp
    n = 2
    while folder.exists():
        folder, n = root / f"{stamp}-{n}", n + 1
    return folder


def images_dir(session: Path) -> Path:
    return session / "images"


def is_session(folder: Path) -> bool:
    return (folder / RECORD).is_file() or (folder / JOURNAL).is_file()


def summarize(folder: Path) -> dict[str, Any]:
    """One line's worth about a session folder, for `diffdeck sessions`."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    row: dict[str, Any] = {"path": str(folder), "size": size}
    try:
        session = Session.open(folder)
        jobs = session.jobs.values()
        return {**row, "created": session.record.get("created"), "jobs": len(jobs),
                "images": sum(len(job["images"]) for job in jobs),
                "models": sorted({str(job["spec"]["model"]) for job in jobs})}
    except SessionError as e:
        return {**row, "problem": str(e)}
    except (KeyError, TypeError, AttributeError) as e:
        return {**row, "problem": f"its record is incomplete ({type(e).__name__}: {e})"}


class Session:
    def __init__(self, folder: Path, record: dict[str, Any]):
        self.folder = Path(folder)
        self.record = record
        self._journal = None

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.record["jobs"]

    @property
    def images_dir(self) -> Path:
        return images_dir(self.folder)

    def next_job_number(self) -> int:
        numbers = [int(job_id.rsplit("-", 1)[-1]) for job_id in self.jobs if job_id.rsplit("-", 1)[-1].isdigit()]
        return max(numbers, default=0) + 1

    @classmethod
    def open(cls, folder: Path) -> "Session":
        """Open a session folder, creating it if it does not exist."""
        folder = Path(folder)
        record_file, journal_file = folder / RECORD, folder / JOURNAL
        if record_file.exists():
            record = _read_record(record_file)
        else:
            record = {"format": FORMAT, "name": folder.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "models": {}, "jobs": {}}
        session = cls(folder, record)
        if journal_file.exists():
            for number, event in _read_journal(journal_file):
                try:
                    session.apply(event)
                except (KeyError, TypeError, AttributeError) as e:
                    raise SessionError(f"{journal_file} line {number}: {event['type']} event is incomplete "
                                       f"({type(e).__name__}: {e})") from None
        return session

    def record_event(self, event) -> None:
        """Append a Dispatcher event if it changes the record."""
        if event.type in RECORDED_EVENTS:
            self.append({"type": event.type, "job": event.job, **event.data})

    def append(self, event: dict[str, Any]) -> None:
        """Record one event: applied in memory, and one line appended to the journal."""
        if event["type"] == "image":
            event = {**event, "path": os.path.relpath(Path(event["path"]).resolve(), self.folder.resolve())}
        self.apply(event)
        if self._journal is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._journal = open(self.folder / JOURNAL, "a", encoding="utf-8")
        self._journal.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._journal.flush()  # in the OS once written: a kill -9 of diffdeck loses nothing

    def apply(self, event: dict[str, Any]) -> None:
        kind, job_id = event["type"], event.get("job")
        if kind == "worker_ready":
            self.record["models"][event["model"]] = {k: event.get(k) for k in (
                "family", "device", "dtype", "identity", "environment")}
            return
        if kind == "queued":
            self.jobs.setdefault(job_id, {"spec": event["spec"], "status": "queued", "images": []})
            self.jobs[job_id].update(status="queued", error=None)
            return
        job = self.jobs.get(job_id)
        if job is None:
            raise SessionError(f"journal event {kind!r} for unknown job {job_id!r}")
        if kind == "started":
            job.update(status="running", timings={k: event[k] for k in ("queue_wait_s", "load_s")})
        elif kind == "image":
            image = {k: event[k] for k in ("image", "seed", "path", "pixel_sha256", "timings", "peak_memory")}
            job["images"] = [i for i in job["images"] if i["image"] != image["image"]] + [image]
        elif kind == "done":
            job.update(status="done", timings=event["timings"], peak_memory=event["peak_memory"])
        else:  # failed, cancelled, held
            job.update(status=kind, error=event.get("error"))

    def compact(self) -> None:
        """Fold the journal into session.yaml (written atomically), then empty the journal."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / (RECORD + ".part")
        with open(partial, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.record, f, sort_keys=False, allow_unicode=True, width=100)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.folder / RECORD)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        (self.folder / JOURNAL).write_text("")

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SessionError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SessionError(f"{path}{where}: not valid YAML") from None
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), dict):
        raise SessionError(f"{path} is not a diffdeck session record (no 'jobs:' mapping)")
    if record.get("format") != FORMAT:
        raise SessionError(f"{path} is in session format {record.get('format')!r}; "
                           f"this diffdeck reads format {FORMAT}")
    record.setdefault("models", {})
    return record


def _read_journal(path: Path) -> list[tuple[int, dict[str, Any]]]:
    lines = path.read_bytes().split(b"\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line, cut short by a kill: the event never happened
                break
            raise SessionError(f"{path} line {number} is not a JSON event") from None
        if not isinstance(event, dict) or event.get("type") not in RECORDED_EVENTS:
            raise SessionError(f"{path} line {number} is not a session event")
        events.append((number, event))
    return events
