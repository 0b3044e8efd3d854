"""Replay a session: say what differs from the recorded environment and which of that can move
pixels by float noise (the drift factors), render the recorded jobs again with their recorded
seeds into a new `replay-<n>/` folder, and with a check judge every image against its record.
A hosted model's images are rendered again only when asked (each costs money again): then the
replay is kept to the budgets of models.yaml as a whole before anything is queued, and each image
it pays for goes into the spend ledger, as a recorded queue's do (diffdeck.engines.service.costs).
A flow's image is judged stage by stage: the first of its stage images that differs from the
record is named, and the later ones (which follow from it) are not judged.
UI side: a client of the Dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.identity import model_identity
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.validation import is_cost
from diffdeck.engines.queue.dispatcher import Dispatcher, Job
from diffdeck.engines.queue.environment_probe import probe_environment
from diffdeck.engines.record.session import Session, SessionError
from diffdeck.engines.service.costs import Costs
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
    hosted: str | None = None  # a hosted model's image not rendered again: why


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
UNSEEDED = "hosted model without a seed"


def new_replay_folder(root: Path) -> Path:
    """Make the next free `replay-<n>/` in root (root too, if need be) before anything renders.
    One that nothing was rendered into is taken away again (`discard_if_empty`)."""
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


def discard_if_empty(folder: Path) -> bool:
    """Remove a replay folder (a session let go of) that holds nothing, its images/ folder too if
    empty: a replay refused, or that rendered nothing. Whether it was removed."""
    for empty in (folder / "images", folder):
        with contextlib.suppress(OSError):
            empty.rmdir()
    return not folder.exists()


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


def hosted_record(session: Session, job_id: str) -> dict[str, Any] | None:
    """What a hosted model's job recorded of its provider (its images' `hosted`); None for a local model's."""
    return next((image["hosted"] for image in session.jobs[job_id]["images"] if isinstance(image.get("hosted"), dict)),
                None)


def to_render(session: Session, job_ids: list[str], rerun_hosted: bool) -> list[str]:
    """The jobs a replay renders again: a hosted model's only when asked (each image costs money again)."""
    return [job_id for job_id in job_ids if rerun_hosted or hosted_record(session, job_id) is None]


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
        if registry.get(model).hosted:  # rendered by the provider's machines: nothing of this one decides its pixels
            drift[model] = []
            continue
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


async def replay(registry: Registry, session: Session, job_ids: list[str], target: Session | None,
                 check: Check | None, on_result: Callable[[ImageResult], None],
                 rerun_hosted: bool = False) -> list[ImageResult]:
    """Render `job_ids` again into `target` (None: where none is to be rendered again, `to_render`),
    and judge them with `check`. A hosted model's jobs are rendered again only with `rerun_hosted`;
    one without a seed is "not reproducible" either way. BudgetError, before anything is queued,
    where rendering them again would go over a budget."""
    results = []
    async with _rendering(registry, session, to_render(session, job_ids, rerun_hosted), target) as replayed:
        for job_id in job_ids:
            recorded = session.jobs[job_id]
            job = await replayed(job_id)
            new = {image["image"]: image for image in job.images} if job else {}
            for image in sorted(recorded["images"], key=lambda i: i["image"]):
                new_stages = {s["stage"]: s for s in job.stages if s["image"] == image["image"]} if job else {}
                result = _result(session, job_id, image, new.get(image["image"]), new_stages, check)
                if isinstance(image.get("hosted"), dict):
                    result = _hosted(result, image, job is not None, check)
                results.append(result)
                on_result(result)
    return results


@contextlib.asynccontextmanager
async def _rendering(registry: Registry, session: Session, job_ids: list[str],
                     target: Session | None) -> AsyncIterator[Callable[[str], Awaitable[Job | None]]]:
    """The jobs rendering again into `target`, recorded there: a recorded job's replay, once it
    finished (None: not rendered again). Kept to the budgets as a whole first, and as each is
    queued (the Dispatcher's admit)."""
    if not job_ids or target is None:
        yield _not_rendered
        return
    costs = Costs(registry, target)
    costs.admit(job_ids, [JobSpec.from_dict(session.jobs[job_id]["spec"]) for job_id in job_ids], (),
                whole="the replay's")
    dispatcher = Dispatcher(registry, target.images_dir, first_job_number=target.next_job_number(),
                            admit=lambda ids, specs: costs.admit(ids, specs, dispatcher.jobs.values()))
    async with dispatcher:
        events = dispatcher.subscribe()

        async def record() -> None:
            async for event in events:
                costs.record_event(event)

        recorder = asyncio.create_task(record())
        try:
            jobs = _queue(dispatcher, session, job_ids)

            async def replayed(job_id: str) -> Job | None:
                return await dispatcher.wait(jobs[job_id].id) if job_id in jobs else None

            yield replayed
        finally:
            recorder.cancel()
            for event in events.drain():
                costs.record_event(event)


async def _not_rendered(job_id: str) -> None:
    return None


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


def _hosted(result: ImageResult, recorded: dict[str, Any], rendered: bool, check: Check | None) -> ImageResult:
    """A hosted model's image: one sent without a seed is not reproducible, rendered again or not (its record
    checked all the same); one with a seed is judged as any other where it was rendered again."""
    if not recorded["hosted"].get("reproducible"):
        verdict = check and (judge(Path(result.recorded), recorded.get("pixel_sha256"), None, check.tolerance, [])
                             or Verdict("not reproducible", note=UNSEEDED))
        return replace(result, verdict=verdict or None, hosted=None if rendered else f"not reproducible ({UNSEEDED})")
    if rendered:
        return result
    cost = recorded.get("cost_usd")
    again = f", about {usd(cost)}" if is_cost(cost) else ""
    return replace(result, hosted=f"not rendered again: a hosted model (--rerun-hosted renders it{again})")


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


# as a summary counts them
VERDICT_KINDS = ("identical", "near-identical", "different", "altered", "missing", "not reproducible")


@dataclass(frozen=True)
class ReplaySummary:
    images: int
    rendered: int  # rendered again
    counts: dict[str, int]  # images of each verdict kind, in VERDICT_KINDS' order
    not_rendered: int  # that should have been: a hosted model's image left alone is counted apart
    hosted_left: int  # hosted models' images not rendered again (without --rerun-hosted, or without a seed)
    folder: Path | None  # the replay's; None where nothing was rendered again
    environment: EnvironmentCheck

    def passed(self, checked: bool) -> bool:
        """Every image rendered again and, when they were checked, none different, altered or missing."""
        return self.not_rendered == 0 and (not checked or sum(self.counts[kind] for kind in FAILING) == 0)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "rendered": self.rendered, **self.counts, "not_rendered": self.not_rendered,
                "hosted_not_rendered": self.hosted_left, "replay": self.folder and str(self.folder),
                "environment_differences": self.environment.differences, "drift_factors": self.environment.drift}


def summarize_replay(results: list[ImageResult], folder: Path | None, environment: EnvironmentCheck) -> ReplaySummary:
    counts = {kind: sum(1 for r in results if (r.verdict.kind if r.verdict else None) == kind) for kind in VERDICT_KINDS}
    left = sum(1 for r in results if r.hosted)
    rendered = sum(1 for r in results if r.replayed is not None)
    return ReplaySummary(len(results), rendered, counts, len(results) - rendered - left, left, folder, environment)
