"""Each image a session records, measured off the render path (diffdeck.engines.sets.quality): in a
thread, one image at a time, its measures recorded as a `quality` event of their own that the
session applies to the image's entry. It never fails or delays a job: an image that cannot be
measured is recorded so (`failed`, and logged), once; any other error is logged and passed over.
Images the session holds unmeasured (made before, or left when diffdeck stopped) are measured when
it is opened again, after the images made since.

An image's reference, for SSIM and MS-SSIM: a variant of an A/B set or grid is measured against the
set's first variant's image of the same index where their sizes match; else a flow's image against
its previous stage's image, resized to its size. The record names it (`reference`), and says why
SSIM is missing where it is (`ssim_unmeasured`). A variant made before the first variant's image is
measured without one, and again once that image comes.

UI side: never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.record.session import Session, SessionWriteError
from diffdeck.engines.sets.similarity import not_comparable
from PIL import Image

log = logging.getLogger("diffdeck.quality")


class Stopped(Exception):
    """Measuring was stopped (the session closes, Ctrl-C) part way through an image."""


@dataclass(frozen=True)
class Reference:
    path: Path | None  # None: not rendered yet
    name: str  # what it is, as the record names it
    resized: bool  # a flow's earlier stage: resized to the image's size; else compared only at the same size


@dataclass(frozen=True)
class Wanted:
    """An image to measure, as the record held it when it was asked for."""
    job: str
    image: int
    path: Path
    pixel_sha256: str | None
    references: tuple[Reference, ...]  # the first that can be compared is used


class QualityRecorder:
    """Measures what `session` records, one image at a time; `tell` is given each quality event
    as it was recorded."""

    def __init__(self, session: Session, tell: Callable[[dict[str, Any]], None]):
        self.session, self._tell = session, tell
        self._sets = SetIndex(session)
        self._recorded: asyncio.Queue[tuple[str, int]] = asyncio.Queue()  # made since start: measured first
        self._backlog: deque[tuple[str, int]] = deque()  # what the session held when opened
        self._idle = asyncio.Event()  # nothing left to measure
        self._stop = threading.Event()  # read between measures, in the measuring thread too
        self._task: asyncio.Task | None = None

    def start(self, backlog: bool) -> None:
        """Measure what is recorded from now on and, with `backlog`, the images the session holds
        without up-to-date measures."""
        if backlog:
            self._backlog.extend((job_id, image["image"]) for job_id, job in self.session.jobs.items()
                                 for image in job["images"])
        self._task = asyncio.create_task(self._measure_all())

    def recorded(self, job_id: str, index: int) -> None:
        """An image was recorded: measure it, and the variants whose reference it is."""
        self._idle.clear()
        for job in (job_id, *self._sets.variants_after(job_id)):
            self._recorded.put_nowait((job, index))

    async def settled(self, backlog: bool = False) -> None:
        """Until every image recorded since `start` is measured (or failed to be), with `backlog`
        the session's older images too, or measuring stopped."""
        if self._task is None or self._task.done():
            return
        waiting = asyncio.ensure_future(self._idle.wait() if backlog else self._recorded.join())
        await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    def close(self) -> None:
        """Stop measuring, the image being measured at its next measure (it is not recorded); what
        is left is measured when the session is opened again."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def _measure_all(self) -> None:
        try:
            while True:
                if self._backlog and self._recorded.empty():
                    await self._measure(*self._backlog.popleft())
                    continue
                if self._recorded.empty():
                    self._idle.set()
                job_id, index = await self._recorded.get()
                try:
                    await self._measure(job_id, index)
                finally:
                    self._recorded.task_done()
        except (SessionWriteError, Stopped):
            return  # stopped, or the session cannot be written (its write_error says so to whoever records)

    async def _measure(self, job_id: str, index: int) -> None:
        try:
            wanted = wanted_measure(self.session, self._sets, job_id, index)
            if wanted is None:
                await asyncio.sleep(0)  # a large session's backlog: the event loop runs between images
                return
            quality = await asyncio.to_thread(measure, wanted, self._stop)
            if _image(self.session, job_id, index).get("pixel_sha256") != wanted.pixel_sha256:
                return  # rendered again meanwhile: that one is measured in its turn
            if "failed" in quality:
                log.warning("could not measure the quality of %s image %d: %s", job_id, index, quality["failed"])
            self._tell(self.session.measured(job_id, index, quality))
        except (SessionWriteError, Stopped):
            raise
        except Exception as e:  # noqa: BLE001 - a measure never fails anything, nor stops the next
            log.warning("could not measure the quality of %s image %d (%s: %s)", job_id, index, type(e).__name__, e)


class SetIndex:
    """The session's sets by the jobs of their variants, built once (again when a set is added: sets
    are only ever added), so that a session's every image does not scan every set."""

    def __init__(self, session: Session):
        self.session = session
        self._by_job: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._indexed = 0

    def of(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(set id, entry) of each set `job_id` is a variant of."""
        if self._indexed != len(self.session.sets):
            self._by_job = {}
            for set_id, entry in self.session.sets.items():
                for variant in entry["variants"]:
                    self._by_job.setdefault(variant["job"], []).append((set_id, entry))
            self._indexed = len(self.session.sets)
        return self._by_job.get(job_id, [])

    def variants_after(self, job_id: str) -> list[str]:
        """The jobs of the sets whose first variant `job_id` is, itself left out."""
        return [v["job"] for _, entry in self.of(job_id) if _first_variant(entry)["job"] == job_id
                for v in entry["variants"] if v["job"] != job_id]


def wanted_measure(session: Session, sets: SetIndex, job_id: str, index: int) -> Wanted | None:
    """What measuring a recorded image takes; None where its measures are up to date (made, with
    a reference where the record now has one, or failed) or its file is gone."""
    image = _image(session, job_id, index)
    path = session.resolve(image["path"]) if image else None
    if path is None or not path.is_file():
        return None
    references = _references(session, sets, job_id, index)
    decidable = bool(references) and references[0].path is not None
    quality = image.get("quality")
    if quality is not None and ("reference" in quality or "failed" in quality or not decidable):
        return None
    return Wanted(job_id, index, path, image.get("pixel_sha256"), references)


def measure(wanted: Wanted, stop: threading.Event) -> dict[str, Any]:
    """An image's quality measures, against the first of its references that can be compared with
    it; where none can, `ssim_unmeasured` says why. While the first is not rendered yet, against
    none. An image that cannot be read or is too small: only `failed`, why. Stopped where `stop`
    is set, between measures."""
    from diffdeck.engines.sets.quality import full_reference, luma, no_reference, scaled  # numpy: not at start

    try:
        with Image.open(wanted.path) as opened:
            original = opened.convert("RGB")
        image = scaled(original)
        y = luma(image)
        _go_on(stop)
        quality: dict[str, Any] = no_reference(image, y)
    except (OSError, Image.DecompressionBombError) as e:
        return {"failed": f"cannot be read ({type(e).__name__})"}
    except ValueError as e:  # too small
        return {"failed": str(e)}
    if image is not original:
        quality["measured_side"] = max(image.size)
    names, why_not = [], []
    for reference in wanted.references:
        if reference.path is None:
            return quality  # what it will be compared with is not there yet: measured again then
        _go_on(stop)
        names.append(reference.name)
        try:
            with Image.open(reference.path) as opened:
                other = opened.convert("RGB")
        except (OSError, Image.DecompressionBombError):  # gone, or no image: the image is measured alone
            why_not.append("cannot be read")
            continue
        if reference.resized and other.size != original.size:
            names[-1] += f", resized from {other.width}x{other.height}"
            other = other.resize(image.size, Image.Resampling.LANCZOS)
        elif why := not_comparable(original, other):
            why_not.append(why)
            continue
        similarity = full_reference(y, luma(scaled(other)))
        if similarity["ssim"] is None:
            why_not.append(f"too small for SSIM ({image.width}x{image.height}; it needs 11 pixels a side)")
            continue
        return {**quality, **similarity, "reference": names[-1]}
    if why_not:
        quality.update(ssim=None, ms_ssim=None, reference="; ".join(names), ssim_unmeasured="; ".join(why_not))
    return quality


def _go_on(stop: threading.Event) -> None:
    if stop.is_set():
        raise Stopped


def _references(session: Session, sets: SetIndex, job_id: str, index: int) -> tuple[Reference, ...]:
    """The images on record an image may be measured against, in order of preference: its set's
    first variant's image of the same index, then its flow's previous stage's."""
    references = []
    for set_id, entry in sets.of(job_id):
        first = _first_variant(entry)
        if first["job"] != job_id:
            image = _image(session, first["job"], index)
            references.append(Reference(session.resolve(image["path"]) if image else None,
                                        f"{first['job']} image {index} ({set_id} {first['label']})", False))
    earlier = [s for s in (session.jobs[job_id].get("stages") or ()) if s["image"] == index]
    if earlier:
        stage = max(earlier, key=lambda s: s["stage"])
        references.append(Reference(session.resolve(stage["path"]),
                                    f"stage {stage['stage']} ({stage.get('kind', '?')}) image {index}", True))
    return tuple(references)


def _first_variant(entry: dict[str, Any]) -> dict[str, Any]:
    return min(entry["variants"], key=lambda v: v["cell"])


def _image(session: Session, job_id: str, index: int) -> dict[str, Any]:
    """A recorded image's entry; {} where the session has none."""
    job = session.jobs.get(job_id) or {"images": []}
    return next((i for i in job["images"] if i["image"] == index), {})
