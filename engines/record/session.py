"""Session folders: `sessions/<name>/` with a YAML record, an append-only journal and `images/`.

    session.yaml    the snapshot: format, name, created, models seen, jobs (human-readable)
    journal.jsonl   one JSON line per event since the snapshot, appended as it happens
    images/         the PNGs, each with its full record in a text chunk

Saving an event costs one appended line whatever the session's size; `compact()` folds the
journal into the snapshot. Applying an event is idempotent, so a crash between writing the
snapshot and emptying the journal replays events the snapshot already holds, harmlessly.
A last journal line cut short by a kill is ignored; everything before it is kept, and a writer
sets the torn bytes aside before it appends. A write that fails is taken back and stops the
recording (SessionWriteError): the journal never holds half an event, nor an event after one.
One process writes a session at a time: `open_for_writing` takes its lock (SessionLock).
Every path in the record is relative to the folder. UI side: YAML and JSON only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import itertools
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import yaml
from diffdeck.engines.core.events import (
    RECORDED_EVENTS,
    STATUSES,
    UNFINISHED,
    VERDICT_EVENTS,
    EventKind,
    JobRecord,
    Status,
)
from diffdeck.engines.core.files import write_whole
from diffdeck.engines.core.jsontext import parse_json
from diffdeck.engines.core.spec import MAX_COUNT, JobSpec
from diffdeck.engines.core.text import visible
from diffdeck.engines.core.validation import is_cost, is_finite_number
from diffdeck.engines.core.yamlfile import load_yaml, parse_yaml, read_utf8
from diffdeck.engines.record.spend import Spent, job_spent, session_spent

FORMAT = 1
DEFAULT_ROOT = Path("sessions")
RECORD = "session.yaml"
JOURNAL = "journal.jsonl"
LOCK = "session.lock"
TIE = "tie"
JOB_FIELDS = {f.name for f in dataclasses.fields(JobSpec)}
# what a session keeps of a flow's stage image (the worker's stage_image message, less type and id)
STAGE_FIELDS = ("stage", "kind", "model", "image", "seed", "path", "pixel_sha256", "timings", "peak_memory", "latents",
                "gpu")


_JOURNAL_EVENTS = RECORDED_EVENTS | VERDICT_EVENTS | {EventKind.QUALITY}  # what a journal line may be


class SessionError(Exception):
    """A session folder that cannot be read as it is. Nothing in it has been changed."""


class SessionLocked(SessionError):
    """Another process is writing the session; the message names it."""


class SessionWriteError(Exception):
    """The session folder could not be written (a full disk, a file-size limit, a read-only
    folder). What was written before is whole; the message says what the journal holds."""


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
    """One line's worth about a session folder, for `diffdeck sessions`; for one that cannot be
    read, why (`problem`), so that a listing goes on past it."""
    row: dict[str, Any] = {"path": str(folder)}
    try:
        row["size"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        session = Session.open(folder)
        jobs = session.jobs.values()
        created = session.record.get("created")  # a hand-edited date is a YAML date, not text
        spent = session_spent(jobs)
        return {**row, "created": None if created is None else str(created), "jobs": len(jobs),
                "images": sum(len(job["images"]) for job in jobs),
                "statuses": dict(Counter(str(job["status"]) for job in jobs)),
                "models": sorted({str(job["spec"]["model"]) for job in jobs}),
                "cost_usd": spent.usd, "unknown_price_images": spent.unknown, "cost": spent.text() if spent else None}
    except SessionError as e:
        return {**row, "problem": str(e)}
    except OSError as e:
        return {**row, "problem": f"cannot be read ({e.strerror or e})"}
    except (KeyError, TypeError, AttributeError) as e:
        return {**row, "problem": f"its record is incomplete ({type(e).__name__}: {e})"}


class Session:
    def __init__(self, folder: Path, record: dict[str, Any]):
        self.folder = Path(folder)
        self.record = record
        self._journal: int | None = None  # the journal's descriptor, opened to append at the first event
        self._lock: SessionLock | None = None
        self._tail_mended = False
        self.write_error: SessionWriteError | None = None  # once set, nothing more is recorded
        self.notices: list[str] = []  # what a writer's owner should say: a lock taken over, a torn line set aside

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.record["jobs"]

    @property
    def sets(self) -> dict[str, dict[str, Any]]:
        """A/B sets and grids: kind, base spec, axes, variants (label, changes, cell, job), picks."""
        return self.record["sets"]

    @property
    def images_dir(self) -> Path:
        return images_dir(self.folder)

    def next_job_number(self) -> int:
        numbers = [int(job_id.rsplit("-", 1)[-1]) for job_id in self.jobs if job_id.rsplit("-", 1)[-1].isdigit()]
        return max(numbers, default=0) + 1

    def next_set_number(self) -> int:
        numbers = [int(set_id.rsplit("-", 1)[-1]) for set_id in self.sets if set_id.rsplit("-", 1)[-1].isdigit()]
        return max(numbers, default=0) + 1

    @classmethod
    def open(cls, folder: Path, create: bool = True) -> "Session":
        """Open a session folder; one that does not exist is created, or with `create=False` refused."""
        folder = Path(folder)
        record_file, journal_file = folder / RECORD, folder / JOURNAL
        if not create and not is_session(folder):
            raise SessionError(f"{folder} is not a session folder (no {RECORD} or {JOURNAL})")
        if record_file.exists():
            record = _read_record(record_file)
        else:
            record = {"format": FORMAT, "name": folder.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "models": {}, "sets": {}, "jobs": {}}
        session = cls(folder, record)
        session._check(record_file)
        if journal_file.exists():
            for number, event in _read_journal(journal_file):
                try:
                    session.apply(event)
                except (KeyError, TypeError, AttributeError) as e:
                    raise SessionError(f"{journal_file} line {number}: {event['type']} event is incomplete "
                                       f"({type(e).__name__}: {e})") from None
        if journal_file.exists():
            session._check(journal_file)
        return session

    @classmethod
    def adopt(cls, folder: Path, record: Any, where: str) -> "Session":
        """A record from elsewhere (a daemon's) as the session of `folder`, refused as one read
        from a file would be, with `where` named as its source. Nothing is written."""
        session = cls(folder, _sections(record, where))
        session._check(where)
        return session

    @classmethod
    def open_for_writing(cls, folder: Path, writer: str, create: bool = True) -> "Session":
        """`open`, as the session's one writer: its lock is taken first (SessionLocked names the
        process holding it) and held until `close`; a last journal line cut short is set aside.
        `writer` is the command, in words, shown to a second writer."""
        lock = SessionLock.take(Path(folder), writer)
        try:
            session = cls.open(folder, create)
            session._lock, session.notices = lock, list(lock.notices)
            session._mend_journal()
        except BaseException:
            lock.release()
            raise
        return session

    def _check(self, where: Path | str) -> None:
        """Refuse a record that is not shaped as diffdeck writes it, naming the first fault and
        where it came from. An image path must name a file inside the folder (relative, never ..)."""
        for job_id, job in self.jobs.items():
            if not isinstance(job_id, str):
                raise SessionError(f"{where}: the job key {job_id!r} is not a job id such as job-0001")
            if not isinstance(job, dict) or not _is_a(STATUSES, job.get("status")):
                raise SessionError(f"{where}: job {job_id!r} has no valid status ({', '.join(Status)})")
            spec = job.get("spec")
            if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or not isinstance(spec.get("prompt"), str):
                raise SessionError(f"{where}: job {job_id!r} has no spec with a model and a prompt")
            crashes = job.get("worker_crashes", 0)
            if not isinstance(crashes, int) or isinstance(crashes, bool) or crashes < 0:
                raise SessionError(f"{where}: job {job_id!r} has worker_crashes {crashes!r}; a count was expected")
            if not _are_measures(job):
                raise SessionError(f"{where}: job {job_id!r} has timings or a peak memory that are not numbers")
            if not isinstance(job.get("images"), list):
                raise SessionError(f"{where}: job {job_id!r} has no list of images")
            for image in job["images"]:
                if not isinstance(image, dict) or not all(isinstance(image.get(k), int) for k in ("image", "seed")):
                    raise SessionError(f"{where}: job {job_id!r} has an image without its index and seed")
                if not _are_measures(image):
                    raise SessionError(f"{where}: job {job_id!r} image {image['image']} has timings or a peak "
                                       "memory that are not numbers")
                if image.get("rating", 0) not in range(6):
                    raise SessionError(f"{where}: job {job_id!r} image {image['image']} has the rating "
                                       f"{image['rating']!r}; a rating is 1 to 5 stars")
                if not _is_cost(image.get("cost_usd", 0)):
                    raise SessionError(f"{where}: job {job_id!r} image {image['image']} has the cost "
                                       f"{image['cost_usd']!r}; a number of US dollars, 0 or more, was expected")
                if not _is_quality(image.get("quality", {})):
                    raise SessionError(f"{where}: job {job_id!r} image {image['image']} has quality measures that "
                                       "are not numbers (and the text of their reference)")
                path = image.get("path")
                if not _is_inside(path):
                    raise SessionError(f"{where}: job {job_id!r} image {image['image']} has the path {path!r}, "
                                       "which leaves the session folder; refusing to use it")
            if "spent" in job and Spent.from_entry(job["spent"]) is None:
                raise SessionError(f"{where}: job {job_id!r} has the spend {job['spent']!r}; usd (US dollars, 0 or "
                                   "more), images and unknown (counts) were expected")
            problem = _stages_problem(job.get("stages", []))
            if problem:
                raise SessionError(f"{where}: job {job_id!r} {problem}")

        for set_id, entry in self.sets.items():
            problem = _set_problem(entry)
            if problem:
                raise SessionError(f"{where}: set {set_id!r} {problem}")

    def record_event(self, event) -> None:
        """Append a Dispatcher event if it changes the record."""
        if event.type in RECORDED_EVENTS:
            self.append({"type": event.type, "job": event.job, **event.data})

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record one event: applied in memory, and one line appended to the journal. Returns it as
        recorded. SessionWriteError when the line cannot be written; from then on every append
        raises it: the record in memory holds an event the journal does not."""
        if self.write_error is not None:
            raise SessionWriteError(*self.write_error.args)
        if event["type"] in (EventKind.IMAGE, EventKind.STAGE_IMAGE):
            event = {**event, **{key: self._relative(event[key]) for key in ("path", "latents") if key in event}}
        if event["type"] == EventKind.IMAGE and "cost_usd" in event and event.get("job") in self.jobs:
            event = {**event, "paid": job_spent(self.jobs[event["job"]]).images + 1}  # its place in the job's spend
        self.apply(event)
        self._write_line(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        return event

    def _write_line(self, line: bytes) -> None:
        """One line at the journal's end, in the OS when this returns (a kill -9 of diffdeck loses
        nothing). A write that fails part way takes back the part it wrote, so no event is ever
        appended after half a line, and the session stops recording."""
        journal, end = self.folder / JOURNAL, None
        try:
            if self._journal is None:
                self._mend_journal()
                self.folder.mkdir(parents=True, exist_ok=True)
                self._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            end = os.fstat(self._journal).st_size
            rest = memoryview(line)
            while rest:
                rest = rest[os.write(self._journal, rest):]
        except SessionWriteError as e:  # a torn last line that could not be set aside: nothing written
            self.write_error = e
            raise
        except OSError as e:
            if end is not None:
                with contextlib.suppress(OSError):  # else the next writer sets the torn line aside
                    os.ftruncate(self._journal, end)
            self._close_journal()
            self.write_error = SessionWriteError(f"could not write {journal} ({e.strerror or e}); the session is "
                                                 "no longer recorded (what was recorded before is kept)")
            raise SessionWriteError(*self.write_error.args) from None

    def _mend_journal(self) -> None:
        """Before this process first writes the journal: a last line cut short is moved aside."""
        if self._tail_mended:
            return
        aside = _set_torn_tail_aside(self.folder / JOURNAL)
        self._tail_mended = True
        if aside:
            path, size = aside
            self.notices.append(f"{self.folder / JOURNAL} ended in a line cut short (by a kill or a failed "
                                f"write); its {size} bytes were moved to {path}")

    def apply(self, event: dict[str, Any]) -> None:
        kind, job_id = EventKind(event["type"]), event.get("job")
        if kind == EventKind.WORKER_READY:
            self.record["models"][event["model"]] = {k: event.get(k) for k in (
                "family", "device", "dtype", "settings", "identity", "environment")}
            return
        if kind == EventKind.SET:
            entry = self.sets.setdefault(event["set"], {"picks": []})
            entry.update({k: event[k] for k in ("kind", "base", "axes", "variants")})
            return
        if kind == EventKind.PICK:
            self._pick(event)
            return
        if kind == EventKind.QUEUED:
            self.jobs.setdefault(job_id, {"spec": event["spec"], "status": Status.QUEUED, "images": []})
            self.jobs[job_id].update(status=Status.QUEUED, error=None)
            if "worker_crashes" in event:
                self.jobs[job_id]["worker_crashes"] = event["worker_crashes"]
            return
        job = self.jobs.get(job_id)
        if job is None:
            raise SessionError(f"journal event {str(kind)!r} for unknown job {job_id!r}")
        if kind == EventKind.STARTED:
            job.update(status=Status.RUNNING, timings={k: event[k] for k in ("queue_wait_s", "load_s")})
        elif kind == EventKind.IMAGE:
            image = {k: event[k] for k in ("image", "seed", "path", "pixel_sha256", "timings", "peak_memory")}
            if "gpu" in event:  # the one that rendered it, where it was a GPU: index, name, UUID
                image["gpu"] = event["gpu"]
            image.update({k: event[k] for k in ("cost_usd", "hosted") if k in event})  # a hosted image's
            job["images"] = [i for i in job["images"] if i["image"] != image["image"]] + [image]
            spent = job_spent(job)
            # every image paid for counts, made again or not; a journal line the record already
            # holds (replayed after a compaction cut short) is counted once
            if "cost_usd" in event and event.get("paid", spent.images + 1) > spent.images:
                job["spent"] = spent.paid(event["cost_usd"]).to_dict()
        elif kind == EventKind.STAGE_IMAGE:
            stage = {k: event[k] for k in STAGE_FIELDS if k in event}
            job["stages"] = [s for s in job.get("stages", []) if (s["image"], s["stage"]) != (stage["image"], stage["stage"])]
            job["stages"].append(stage)
        elif kind == EventKind.RATING:
            _image_of(job_id, job, event["image"], "a rating")["rating"] = event["stars"]
        elif kind == EventKind.QUALITY:  # a daemon's too: checked as it comes, not only when a session is read
            if not _is_quality(event.get("quality")):
                raise SessionError(f"quality measures for {job_id} image {event.get('image')!r} that are not numbers")
            _image_of(job_id, job, event.get("image"), "quality measures")["quality"] = event["quality"]
        elif kind == EventKind.DONE:
            job.update(status=Status.DONE, timings=event["timings"], peak_memory=event["peak_memory"])
        else:  # failed, cancelled, held
            job.update(status=Status(kind), error=event.get("error"))
            if "worker_crashes" in event:
                job["worker_crashes"] = event["worker_crashes"]

    def _pick(self, event: dict[str, Any]) -> None:
        """The winner of a pair (a job id, or TIE); a pick of the same pair replaces it, and
        winner None takes it back."""
        entry = self.sets.get(event["set"])
        if entry is None:
            raise SessionError(f"a pick in set {event['set']!r}, which the session does not have")
        pair = {event["left"], event["right"]}
        entry["picks"] = [p for p in entry["picks"] if not (p["image"] == event["image"] and {p["left"], p["right"]} == pair)]
        if event["winner"] is not None:
            entry["picks"].append({k: event[k] for k in ("image", "left", "right", "winner")})

    def pick(self, set_id: str, image: int, left: str, right: str, winner: str | None) -> dict[str, Any]:
        """Record who won a pair; returns the event recorded."""
        return self.append({"type": EventKind.PICK, "set": set_id, "image": image, "left": left, "right": right,
                            "winner": winner})

    def measured(self, job_id: str, image: int, quality: dict[str, Any]) -> dict[str, Any]:
        """Record what an image measures (diffdeck.engines.sets.quality); returns the event recorded."""
        return self.append({"type": EventKind.QUALITY, "job": job_id, "image": image, "quality": quality})

    def rate(self, job_id: str, image: int, stars: int) -> dict[str, Any]:
        """1 to 5 stars; 0 takes the rating back. Returns the event recorded."""
        if not 0 <= stars <= 5:
            raise ValueError(f"a rating is 1 to 5 stars (0 clears it), not {stars}")
        return self.append({"type": EventKind.RATING, "job": job_id, "image": image, "stars": stars})

    def wins(self, set_id: str) -> dict[str, int]:
        """Picks won per variant label, and ties, in the set's variant order."""
        entry = self.sets[set_id]
        labels = {v["job"]: v["label"] for v in entry["variants"]}
        counts = {label: 0 for label in labels.values()} | {TIE: 0}
        for pick in entry["picks"]:
            winner = TIE if pick["winner"] == TIE else labels.get(pick["winner"])
            if winner is not None:
                counts[winner] += 1
        return counts

    def image_marks(self) -> dict[tuple[str, int], str]:
        """What the user said of each image, short: its rating and the picks it won ("★4 ✓2")."""
        won: dict[tuple[str, int], int] = {}
        for entry in self.sets.values():
            for pick in entry["picks"]:
                if pick["winner"] != TIE:
                    won[pick["winner"], pick["image"]] = won.get((pick["winner"], pick["image"]), 0) + 1
        marks = {}
        for job_id, job in self.jobs.items():
            for image in job["images"]:
                key = (job_id, image["image"])
                text = " ".join(filter(None, [f"★{image['rating']}" if image.get("rating") else "",
                                              f"✓{won[key]}" if key in won else ""]))
                if text:
                    marks[key] = text
        return marks

    def job(self, job_id: str) -> JobRecord:
        """A job of the record in the shape every side shares; its image paths are relative to the folder."""
        return JobRecord.from_dict({"id": job_id, **self.jobs[job_id]})

    def unfinished(self) -> list[JobRecord]:
        """The jobs a reopened session queues again: those queued, and those running when
        diffdeck stopped, in the order they were queued. Each keeps only the images still on disk.
        A run cut short counts as a crash of its worker: a job that keeps taking diffdeck down
        (the host's OOM killer, say) is held after two, not retried forever."""
        pending = [self.job(job_id) for job_id, job in self.jobs.items() if job["status"] in UNFINISHED]
        for job in pending:
            job.images = [i for i in job.images if self.resolve(i["path"]).is_file()]
            job.stages = [self._absolute(stage) for stage in job.stages
                          if all(self.resolve(stage[key]).is_file() for key in ("path", "latents") if key in stage)]
            job.worker_crashes += job.status == Status.RUNNING
        return pending

    def cancel_at_rest(self, job_id: str) -> bool:
        """Cancel a job of a session nobody is rendering (the caller holds its lock): one queued,
        or running when diffdeck stopped. False when it had finished."""
        if self._known(job_id)["status"] not in UNFINISHED:
            return False
        self.append({"type": EventKind.CANCELLED, "job": job_id, "error": None})
        return True

    def retry_at_rest(self, job_id: str, force: bool = False) -> None:
        """Queue a failed, cancelled or (with force) held job of a session nobody is rendering
        again, with its seeds; the next `resume` or workbench renders the images it lacks."""
        job = self._known(job_id)
        if job["status"] == Status.HELD and not force:
            raise SessionError(f"{job_id} is held: it crashed its worker {job.get('worker_crashes', 0)} times; "
                               "retry it with --force to try again")
        if job["status"] not in (Status.FAILED, Status.CANCELLED, Status.HELD):
            raise SessionError(f"{job_id} is {job['status']}; only failed, cancelled or held jobs can be retried")
        self.append({"type": EventKind.QUEUED, "job": job_id, "spec": job["spec"],
                     **({"worker_crashes": 0} if force else {})})

    def _known(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise SessionError(f"{self.folder} has no job {job_id!r}")
        return self.jobs[job_id]

    def resolve(self, relative: str) -> Path:
        """A path from the record, made absolute. Paths were checked to stay inside on open."""
        return self.folder / relative

    def _relative(self, path: str) -> str:
        return os.path.relpath(Path(path).resolve(), self.folder.resolve())

    def _absolute(self, stage: dict[str, Any]) -> dict[str, Any]:
        """A stage image's record with its files' paths made absolute: what the next leg of its
        flow is sent, where the job resumes."""
        return {**stage, **{key: str(self.resolve(stage[key])) for key in ("path", "latents") if key in stage}}

    def compact(self) -> None:
        """Fold the journal into session.yaml (written atomically), then empty the journal.
        SessionWriteError when session.yaml cannot be written (a full disk, a read-only folder):
        then nothing has changed and the journal still holds everything. A session that stopped
        recording is not compacted: its record in memory holds what the journal does not."""
        if self.write_error is not None:
            raise SessionWriteError(*self.write_error.args)
        text = io.StringIO()
        _dump_record(self.record, text)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_whole(self.folder / RECORD, text.getvalue().encode())
            self._close_journal()
            (self.folder / JOURNAL).write_bytes(b"")
        except OSError as e:
            raise SessionWriteError(f"could not write {self.folder / RECORD} ({e.strerror or e}); nothing is lost: "
                                    "the journal still holds everything") from None

    def close(self) -> None:
        """Done writing: the journal closed and the session's lock, if this process took it, let go."""
        self._close_journal()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_journal(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None


class SessionLock:
    """One writer per session folder. `session.lock` says who holds it (pid, host, command,
    since) and is held with flock for the writer's life: however the writer ends, even by kill -9,
    the kernel lets go of it, and the next writer takes it over. Removed when let go."""

    def __init__(self, path: Path, fd: int, made: list[Path], notices: list[str]):
        self.path, self._fd, self._made, self.notices = path, fd, made, notices

    @classmethod
    def take(cls, folder: Path, writer: str) -> "SessionLock":
        """The lock of `folder` (made if need be), or SessionLocked naming the process that holds it."""
        made = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))
        path = folder / LOCK
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = _locked(path)
        except OSError as e:
            raise SessionError(f"{folder} cannot be written: {e.strerror or e}") from None
        if fd is None:
            raise SessionLocked(f"{folder} is being written by {_holder_text(_holder(path))}; one writer at a time: "
                                "wait for it to finish, or write another session")
        previous, here = _holder(fd), socket.gethostname()
        notices = []
        if previous.get("host", here) != here:  # the kernel cannot tell whether a process there lives
            os.close(fd)
            raise SessionLocked(f"{folder} is being written by {_holder_text(previous)}, as its {LOCK} says; "
                                f"if that process is no longer running, remove {path}")
        if previous:
            notices.append(f"{folder}: taking over the lock of {_holder_text(previous)}, which is no longer running")
        holder = {"pid": os.getpid(), "host": here, "command": writer, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):  # the flock is what counts; a full disk only leaves it unnamed
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        return cls(path, fd, made, notices)

    def release(self) -> None:
        """Let go: the file removed first, so that whoever opens it next makes a new one."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        for folder in self._made:  # made for a writer that wrote nothing (bad input): gone again
            with contextlib.suppress(OSError):
                folder.rmdir()


def _locked(path: Path) -> int | None:
    """A descriptor of `path` holding its flock, or None while another holds it. A file removed
    by its holder between our open and our flock is not the lock any more: open it again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(lock: Path | int) -> dict[str, Any]:
    """What a lock file says of its holder; {} when it says nothing readable."""
    try:
        data = os.pread(lock, 4096, 0) if isinstance(lock, int) else lock.read_bytes()[:4096]
        holder = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_text(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "another process (its lock does not say which)"
    return visible(f"pid {holder['pid']} on {holder.get('host', '?')} ({holder.get('command', '?')}) "
                   f"since {holder.get('since', '?')}")


def _set_torn_tail_aside(journal: Path) -> tuple[Path, int] | None:
    """A journal whose last line was cut short (a kill, a failed write): the torn bytes are moved
    to journal.torn-<time> beside it and the journal rewritten without them, atomically, so that
    the next event starts a line of its own. Returns where they went and how many there were."""
    try:
        with open(journal, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            f.seek(0)
            data = f.read()
    except FileNotFoundError:
        return None
    keep = data[: data.rfind(b"\n") + 1]
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 2
    aside = journal.with_name(f"journal.torn-{stamp}")
    while aside.exists():
        aside, n = journal.with_name(f"journal.torn-{stamp}-{n}"), n + 1
    try:
        write_whole(aside, data[len(keep):])
        write_whole(journal, keep)
    except OSError as e:
        with contextlib.suppress(OSError):
            aside.unlink()
        raise SessionWriteError(f"{journal} ends in a line cut short, which could not be set aside "
                                f"({e.strerror or e}); nothing was written") from None
    return aside, len(data) - len(keep)


def _set_problem(entry: Any) -> str | None:
    """What is wrong with a recorded A/B set or grid, in words; None when readers can use it:
    every cell points inside its axes, every count and seed is a number."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("ab", "grid"):
        return "is neither an A/B set nor a grid"
    base, axes, variants, picks = (entry.get(k) for k in ("base", "axes", "variants", "picks"))
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in ("prompt", "model")) \
            or base.get("count") not in range(1, MAX_COUNT + 1) \
            or not (base.get("seeds") is None or isinstance(base["seeds"], list) and all(map(_is_count, base["seeds"]))):
        return "has no base spec with a prompt, a model, a count and its seeds"
    if not set(base) <= JOB_FIELDS:
        return f"has a base spec with fields a job does not have: {', '.join(sorted(set(base) - JOB_FIELDS))}"
    if not isinstance(axes, list) or len(axes) > 3 or (entry["kind"] == "grid") != bool(axes) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("text"), str)
            and isinstance(a.get("values"), list) and isinstance(a.get("labels"), list)
            and 0 < len(a["values"]) == len(a["labels"]) for a in axes):
        return "has axes without a name, text, values and labels (a grid has one to three, an A/B set none)"
    sizes = [len(a["labels"]) for a in axes] or [26]  # an A/B cell is the variant's letter: A to Z
    if not isinstance(variants, list) or not variants or not all(
            isinstance(v, dict) and isinstance(v.get("label"), str) and isinstance(v.get("job"), str)
            and isinstance(v.get("changes"), dict) and isinstance(v.get("cell"), list) and len(v["cell"]) == len(sizes)
            and all(_is_count(i) and i < n for i, n in zip(v["cell"], sizes)) for v in variants):
        return "has no list of variants, each with a label, a job, its changes and a cell inside the set"
    if len({tuple(v["cell"]) for v in variants}) < len(variants):
        return "has two variants in one cell"
    if not isinstance(picks, list) or not all(
            isinstance(p, dict) and _is_count(p.get("image"))
            and all(isinstance(p.get(k), str) for k in ("left", "right", "winner")) for p in picks):
        return "has picks that are not (image, left job, right job, winner)"
    return None


def _stages_problem(stages: Any) -> str | None:
    """What is wrong with a job's recorded stage images, in words; None when the next leg of its
    flow can be sent them: each names its stage and image, its measures are numbers, its files
    lie inside the folder."""
    if not isinstance(stages, list):
        return "has stage images that are not a list"
    for stage in stages:
        if not isinstance(stage, dict) or not all(_is_count(stage.get(k)) for k in ("stage", "image", "seed")):
            return "has a stage image without its stage, image index and seed"
        if not _are_measures(stage):
            return f"stage {stage['stage']} image {stage['image']} has timings or a peak memory that are not numbers"
        for key in ("path", "latents") if "latents" in stage else ("path",):
            if not _is_inside(stage.get(key)):
                return (f"stage {stage['stage']} image {stage['image']} has the {key} path {stage.get(key)!r}, "
                        "which leaves the session folder; refusing to use it")
    return None


def _image_of(job_id: str, job: dict[str, Any], index: int, what: str) -> dict[str, Any]:
    """A job's image by its index; SessionError where `what` (an event's) names one it does not have."""
    image = next((i for i in job["images"] if i["image"] == index), None)
    if image is None:
        raise SessionError(f"{what} for {job_id} image {index}, which it does not have")
    return image


def _is_cost(value: Any) -> bool:
    return value is None or is_cost(value)


QUALITY_TEXTS = frozenset({"reference", "ssim_unmeasured", "failed"})  # a quality record's words; the rest numbers


def _is_quality(quality: Any) -> bool:
    """Whether an image's quality measures are finite numbers by name (None: not measured), and its
    words (reference, why not), as the views that print them with a number format need."""
    return isinstance(quality, dict) and all(
        isinstance(value, str) if name in QUALITY_TEXTS else value is None or is_finite_number(value)
        for name, value in quality.items())


def _is_a(words: frozenset[str], value: Any) -> bool:
    """Whether `value` is one of `words` (a Status, say): never true of a list or a mapping from a hostile file."""
    return isinstance(value, str) and value in words


def _is_inside(path: Any) -> bool:
    """Whether `path` names a file inside the session folder: relative, never through .., not the folder."""
    if not isinstance(path, str) or os.path.isabs(path):
        return False
    normal = os.path.normpath(path)
    return normal != "." and not normal.startswith("..")


def _are_measures(entry: dict[str, Any]) -> bool:
    """Whether a job's or an image's timings are seconds by name and its peak memory bytes, as
    the views that print them with a number format need."""
    timings, peak = entry.get("timings", {}), entry.get("peak_memory")
    return isinstance(timings, dict) and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                             for t in timings.values()) and (peak is None or _is_count(peak))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _dump_record(record: dict[str, Any], out: TextIO) -> None:
    """Block YAML for the header; then one line per job, a JSON flow mapping (JSON is YAML too),
    so any YAML tool reads the file and diffdeck reads 10,000 jobs in a fraction of a second."""
    header = {k: v for k, v in record.items() if k not in _LINE_SECTIONS}
    yaml.dump(header, out, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    for section in _LINE_SECTIONS:
        out.write(f"{section}:\n" if record[section] else f"{section}: {{}}\n")
        for key, value in record[section].items():
            out.write(f"  {json.dumps(key)}: {json.dumps(value, separators=(', ', ': '))}\n")


def _read_record(path: Path) -> dict[str, Any]:
    text = read_utf8(path, SessionError)
    return _sections(_load_as_written(text) or parse_yaml(text, path, SessionError), path)


def _sections(record: Any, where: Path | str) -> dict[str, Any]:
    """A record with the sections every reader relies on (format, models, sets, jobs), or a
    SessionError naming `where`."""
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), dict):
        raise SessionError(f"{where} is not a diffdeck session record (no 'jobs:' mapping)")
    if record.get("format") != FORMAT:
        raise SessionError(f"{where} is in session format {record.get('format')!r}; "
                           f"this diffdeck reads format {FORMAT}")
    record.setdefault("models", {})
    record.setdefault("sets", {})  # sessions from before A/B sets
    for section in ("models", "sets"):
        if not isinstance(record[section], dict):
            raise SessionError(f"{where}: '{section}:' is not a mapping of names to entries")
    return record


def _load_as_written(text: str) -> dict[str, Any] | None:
    """The fast path for a record as `_dump_record` writes it: the header as YAML, each job line
    as JSON. None for anything else (edited by hand, say): the caller parses it all as YAML."""
    header, marker, jobs = text.partition("\njobs:\n")
    if not marker:
        return None
    header, marker, sets = header.partition("\nsets:\n")
    try:
        record = load_yaml(header)
    except (yaml.YAMLError, RecursionError):
        return None  # parse_yaml names the line, or says it is nested too deeply
    if not isinstance(record, dict) or "jobs" in record or (marker and "sets" in record):
        return None
    record["jobs"] = _json_lines(jobs)
    if marker:
        record["sets"] = _json_lines(sets)
    return None if record["jobs"] is None or record.get("sets", {}) is None else record


def _json_lines(section: str) -> dict[str, Any] | None:
    """`  "key": {json}` lines, as `_dump_record` writes them; None for anything else."""
    entries = {}
    for line in section.rstrip("\n").split("\n"):  # ASCII only (JSON escapes the rest): no other line breaks
        try:
            key, value = line.split(": ", 1) if line.startswith('  "') else (None, None)
            entries[parse_json(key)] = parse_json(value)
        except (ValueError, TypeError):
            return None
    return entries


_LINE_SECTIONS = ("sets", "jobs")  # written a line per entry, after the header
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _read_journal(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise SessionError(f"{path} cannot be read: {e.strerror or e}") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = parse_json(line)
        except ValueError:
            if number == len(lines):  # the last line, cut short by a kill: the event never happened
                break
            raise SessionError(f"{path} line {number} is not a JSON event") from None
        if not isinstance(event, dict) or not _is_a(_JOURNAL_EVENTS, event.get("type")):
            raise SessionError(f"{path} line {number} is not a session event")
        events.append((number, event))
    return events
