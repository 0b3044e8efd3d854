"""Replay a session: say what differs from the recorded environment and which of that can move
pixels by float noise (the drift factors), render the recorded jobs again with their recorded
seeds into a new `replay-<n>/` folder, and with a check judge every image against its record.
A flow's image is judged stage by stage: the first of its stage images that differs from the
record is named, and the later ones (which follow from it) are not judged.
UI side: a client of the Dispatcher.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.core.events import Status
from diffdeck.engines.core.identity import model_identity
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.dispatcher import Dispatcher, Job
from diffdeck.engines.queue.environment_probe import probe_environment
from diffdeck.engines.record.session import Session, SessionError
from diffdeck.engines.sets.similarity import Tolerance, Verdict, compare
from diffdeck.engines.sets.variants import VariantSet
from PIL import Image


@dataclass
class ImageResult:
    job: str
    image: int
    seed: int
    recorded: str
    replayed: str | None
    verdict: Verdict | None  # None: not checked, or (the record intact) not rendered
    stage: str | None = None  # a flow's image: the first stage whose image fails the check, "stage 1 (upscale)"
    gpu_drift: list[str] = field(default_factory=list)  # rendered again on another GPU than recorded


@dataclass(frozen=True)
class Check:
    """How a replay judges its images: the near-identical bounds, and per model the drift factors
    named before rendering. Near-identical passes only for a model with a drift factor."""
    tolerance: Tolerance
    drift: dict[str, list[str]]


@dataclass(frozen=True)
class EnvironmentCheck:
    differences: list[str]  # "model: where: recorded -> now", everything that differs
    drift: dict[str, list[str]]  # per model, what of that decides bit-exactness


# What decides whether a render repeats bit for bit. A difference in one of these from the record
# is a drift factor; Python, the platform string, the other libraries and diffdeck's own version
# are reported but are not (a change there that moves pixels is a change to find, not noise).
DRIFT_FIELDS = ("cpu", "cuda", "cudnn", "gpus", "driver")
DRIFT_LIBRARIES = ("torch", "diffusers", "transformers", "numpy")
FAILING = ("different", "altered", "missing")  # verdict kinds that fail a check


def new_replay_folder(root: Path) -> Path:
    """Make the next free `replay-<n>/` in root (root too, if need be) before anything renders."""
    n = 1
    while True:
        folder = root / f"replay-{n}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            n += 1
        except OSError as e:
            raise SessionError(f"cannot write the replay into {root}: {e.strerror or e}; "
                               "name a folder that can be written with --into DIR") from None


def select_jobs(session: Session, selector: str | None) -> list[str]:
    """'all' (default), or job ids separated by commas."""
    done = [job_id for job_id, job in session.jobs.items() if job["status"] == Status.DONE]
    if not selector or selector == "all":
        return done
    wanted = [s.strip() for s in selector.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in done]
    if unknown:
        raise SessionError(f"no finished job {unknown[0]!r} in {session.folder}; finished: {', '.join(done) or 'none'}")
    return wanted


def job_models(session: Session, job_ids: list[str]) -> list[str]:
    """Every model the jobs rendered with: their own, and their flows' stages'."""
    models = set()
    for job_id in job_ids:
        spec = session.jobs[job_id]["spec"]
        models |= {spec["model"], *(stage.get("model") or spec["model"] for stage in spec.get("stages") or ())}
    return sorted(models)


def check_environment(session: Session, registry: Registry, models: list[str]) -> EnvironmentCheck:
    """What differs, for each model, between what it was rendered with and what is here now:
    the environment (Python, libraries, CPU, CUDA, GPUs) and the model itself (revision, weight
    hashes, pipeline class, scheduler config); and of that, the drift factors."""
    environment = probe_environment()
    if environment is None:
        unread = "this machine's environment could not be read (is torch installed?)"
        return EnvironmentCheck([unread], {model: [unread] for model in models})
    lines, drift = [], {}
    for model in models:
        record = session.record["models"].get(model) or {}
        folder = registry.files(model).folder
        now = {"environment": environment, "model": model_identity(folder) if folder else None}
        then = {"environment": record.get("environment"), "model": record.get("identity")}
        lines += [f"{model}: {d}" for d in differences(then, now)]
        drift[model] = drift_factors(record.get("environment"), environment)
    return EnvironmentCheck(lines, drift)


def drift_factors(recorded: Any, current: dict[str, Any]) -> list[str]:
    """What differs between a recorded environment and this one of what decides bit-exactness;
    a record without the CPU (made before diffdeck recorded it) leaves that unknown."""
    if not isinstance(recorded, dict):
        return ["environment not recorded"]
    fields = [field for field in DRIFT_FIELDS if field != "cpu" or "cpu" in recorded]
    unknown = [] if "cpu" in recorded else ["CPU not recorded"]
    return unknown + differences(_decisive(recorded, fields), _decisive(current, fields))


def _decisive(environment: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    versions = environment.get("versions")
    versions = versions if isinstance(versions, dict) else {}
    return {**{field: environment.get(field) for field in fields},
            "versions": {name: versions.get(name) for name in DRIFT_LIBRARIES}}


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """'where: recorded -> now' for every leaf that differs, in a stable order."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [line for key in sorted(set(recorded) | set(current), key=str)
                for line in differences(recorded.get(key), current.get(key), f"{prefix}{key}.")]
    return [] if recorded == current else [f"{prefix.rstrip('.')}: {recorded!r} -> {current!r}"]


async def replay(registry: Registry, session: Session, job_ids: list[str], target: Session, check: Check | None,
                 on_result: Callable[[ImageResult], None]) -> list[ImageResult]:
    results = []
    async with Dispatcher(registry, target.images_dir, first_job_number=target.next_job_number()) as dispatcher:
        events = dispatcher.subscribe()
        recorder = asyncio.create_task(target.record_events(events))
        try:
            replayed = _queue(dispatcher, session, job_ids)
            for job_id in job_ids:
                recorded, job = session.jobs[job_id], await dispatcher.wait(replayed[job_id].id)
                new = {image["image"]: image for image in job.images}
                for image in sorted(recorded["images"], key=lambda i: i["image"]):
                    new_stages = {s["stage"]: s for s in job.stages if s["image"] == image["image"]}
                    result = _result(session, job_id, image, new.get(image["image"]), new_stages, check)
                    results.append(result)
                    on_result(result)
        finally:
            recorder.cancel()
            for event in events.drain():
                target.record_event(event)
    return results


def _queue(dispatcher: Dispatcher, session: Session, job_ids: list[str]) -> dict[str, Job]:
    """Queue the recorded jobs again: those of an A/B set or grid as that set (its id, labels
    and cells kept), the others one by one. Recorded job id -> its replay."""
    specs = {job_id: JobSpec.from_dict(session.jobs[job_id]["spec"]) for job_id in job_ids}
    replayed: dict[str, Job] = {}
    for set_id, entry in session.sets.items():
        variants, recorded = VariantSet.from_record(entry, specs)
        if variants.variants:
            _, jobs = dispatcher.submit_set(variants, set_id=set_id)
            replayed.update(zip(recorded, jobs))
    for job_id in job_ids:
        if job_id not in replayed:
            replayed[job_id] = dispatcher.submit(specs[job_id])
    return replayed


def _result(session: Session, job_id: str, recorded: dict[str, Any], new: dict[str, Any] | None,
            new_stages: dict[int, dict[str, Any]], check: Check | None) -> ImageResult:
    """One image's replay and, with a check, its verdict: a flow's, that of the first stage whose
    image fails, in stage order, the image itself (its last stage's) last."""
    recorded_path = session.resolve(recorded["path"])
    result = ImageResult(job_id, recorded["image"], recorded["seed"], str(recorded_path),
                         new["path"] if new else None, None, gpu_drift=gpu_drift(recorded, new))
    if not check:
        return result
    spec = session.jobs[job_id]["spec"]
    stages = spec.get("stages") or ()
    recorded_stages = sorted((s for s in session.jobs[job_id].get("stages", []) if s["image"] == recorded["image"]),
                             key=lambda s: s["stage"])
    for stage in recorded_stages:
        replayed = new_stages.get(stage["stage"])
        verdict = judge(session.resolve(stage["path"]), stage.get("pixel_sha256"), replayed and replayed["path"],
                        check.tolerance, check.drift.get(stage["model"], []) + gpu_drift(stage, replayed))
        if verdict is not None and verdict.kind in FAILING:
            result.verdict, result.stage = verdict, f"stage {stage['stage']} ({stage['kind']})"
            return result
    last_model = (stages[-1].get("model") or spec["model"]) if stages else spec["model"]
    result.verdict = judge(recorded_path, recorded.get("pixel_sha256"), result.replayed, check.tolerance,
                           check.drift.get(last_model, []) + result.gpu_drift)
    if stages and result.verdict is not None and result.verdict.kind in FAILING:
        result.stage = f"stage {len(stages) - 1} ({stages[-1]['kind']})"
    return result


def gpu_drift(recorded: dict[str, Any], new: dict[str, Any] | None) -> list[str]:
    """A drift factor where an image recorded on one GPU was rendered again on another (even two
    of one kind may differ in the last bit); a change between GPU and CPU is the environment's."""
    then, now = recorded.get("gpu"), (new or {}).get("gpu")
    if not (isinstance(then, dict) and isinstance(now, dict)) or then.get("uuid") == now.get("uuid"):
        return []
    return [f"GPU: {then.get('index')} {then.get('name')} ({then.get('uuid')}) -> "
            f"{now.get('index')} {now.get('name')} ({now.get('uuid')})"]


def judge(recorded: Path, recorded_sha256: str | None, new: str | None, tolerance: Tolerance,
          drift: list[str]) -> Verdict | None:
    """The recorded image against its record first, whatever the replay gave; then the replay
    against it, where near-identical needs a drift factor. None: intact but not rendered."""
    if not recorded.is_file():
        return Verdict("missing")
    try:
        pixels = file_pixel_sha256(recorded)
    except (OSError, Image.DecompressionBombError):  # PIL's "cannot identify image file" is an OSError
        return Verdict("altered", note="the recorded file is not a readable image")
    if recorded_sha256 not in (None, pixels):
        return Verdict("altered", note="its pixels no longer match the SHA-256 in the record")
    if new is None:
        return None
    verdict = compare(recorded, new, tolerance)
    if verdict.kind == "near-identical" and not drift:
        return replace(verdict, kind="different", note="nothing that decides bit-exactness differs from the record")
    return verdict


def result_dict(result: ImageResult) -> dict[str, Any]:
    data = asdict(result)
    data["verdict"] = asdict(result.verdict) if result.verdict else None
    return data


VERDICT_KINDS = ("identical", "near-identical", "different", "altered", "missing")  # as a summary counts them


@dataclass(frozen=True)
class ReplaySummary:
    images: int
    counts: dict[str, int]  # images of each verdict kind, in VERDICT_KINDS' order
    not_rendered: int
    folder: Path  # the replay's
    environment: EnvironmentCheck

    def passed(self, checked: bool) -> bool:
        """Every image rendered again and, when they were checked, none different, altered or missing."""
        return self.not_rendered == 0 and (not checked or sum(self.counts[kind] for kind in FAILING) == 0)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, **self.counts, "not_rendered": self.not_rendered, "replay": str(self.folder),
                "environment_differences": self.environment.differences, "drift_factors": self.environment.drift}


def summarize_replay(results: list[ImageResult], folder: Path, environment: EnvironmentCheck) -> ReplaySummary:
    counts = {kind: sum(1 for r in results if (r.verdict.kind if r.verdict else None) == kind) for kind in VERDICT_KINDS}
    return ReplaySummary(len(results), counts, sum(1 for r in results if r.replayed is None), folder, environment)
