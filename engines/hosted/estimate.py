"""What a job or a set will cost before it is sent: each hosted model's images at the price of the
size its provider will be sent (the provider's nearest size or aspect ratio), local models
nothing. Reads the models' entries only: no files, no network.

    job_estimate(JobSpec("a sign", model="ideo", count=2), registry).text()
    -> "about $0.10 (2 x $0.05, ideo at published prices read 2026-12-01)"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.flow_checks import expand, route_job
from diffdeck.engines.core.registry import Registry, RegistryError
from diffdeck.engines.core.spec import JobSpec, SpecError
from diffdeck.engines.hosted.prices import Price, price
from diffdeck.engines.hosted.providers import provider

LOCAL = "local"  # Price.source of a local model's images


@dataclass(frozen=True)
class Part:
    """A model's images in an estimate, at one price each."""

    model: str
    images: int
    price: Price

    @property
    def usd(self) -> float | None:
        return self.price.of(self.images)

    def describe(self) -> str:
        if self.price.source == LOCAL:
            return f"{self.model} free"
        if self.price.usd is None:
            return f"{self.images} x {self.model}: {self.price.where()}"
        return f"{self.images} x {usd(self.price.usd)}, {self.model} at {self.price.where()}"


@dataclass(frozen=True)
class Estimate:
    parts: tuple[Part, ...] = ()

    @property
    def usd(self) -> float | None:
        """The whole, in US dollars; None where a hosted model's price is not known."""
        costs = [part.usd for part in self.parts]
        return None if None in costs else round(sum(costs), 6)

    @property
    def hosted(self) -> bool:
        """Whether anything in it is paid for."""
        return any(part.price.source != LOCAL for part in self.parts)

    @property
    def unknown(self) -> list[str]:
        """The hosted models in it whose price is not known."""
        return [part.model for part in self.parts if part.usd is None]

    def __add__(self, other: Estimate) -> Estimate:
        images: dict[tuple[str, Price], int] = {}
        for part in self.parts + other.parts:
            images[(part.model, part.price)] = images.get((part.model, part.price), 0) + part.images
        return Estimate(tuple(Part(model, count, each) for (model, each), count in images.items()))

    def text(self) -> str:
        """The total and how it adds up: "about $0.16 (2 x $0.08, ideo at published prices read ...)"."""
        total = "an amount not known" if self.usd is None else f"about {usd(self.usd)}"
        return f"{total} ({'; '.join(part.describe() for part in self.parts)})"


def job_estimate(spec: JobSpec, registry: Registry, made: int = 0) -> Estimate:
    """The images of a job still to make (`made` of them are) at each model's price: the job's
    model, and each model of its flow's stages. `spec` routed or not, resolved or not; its route's
    money cap applies (the cheap route where the chosen one is over it)."""
    job = expand(route_job(spec, registry, price=pricer(registry)), registry)
    images = max(0, job.count - made)
    models = dict.fromkeys([job.model, *(stage.model for stage in job.stages if stage.model)])
    return Estimate(tuple(Part(name, images, _price(registry, name, job)) for name in models))


def set_estimate(specs: Iterable[JobSpec], registry: Registry) -> Estimate:
    """Jobs together (an A/B set, a grid, a queue)."""
    return sum((job_estimate(spec, registry) for spec in specs), Estimate())


def cost_note(specs: Iterable[JobSpec], registry: Registry) -> str | None:
    """What jobs will cost, in words, for a set to show before it is queued: "estimated cost about
    $0.10 (...)"; None where all are local, or where a job cannot be estimated (queueing it says
    why, naming its variant)."""
    try:
        estimate = set_estimate(specs, registry)
    except (SpecError, RegistryError):
        return None
    return f"estimated cost {estimate.text()}" if estimate.hosted else None


def pricer(registry: Registry) -> Callable[[JobSpec], float | None]:
    """A job's estimated dollars, as route_job takes them for a money cap."""
    return lambda spec: job_estimate(spec, registry).usd


def _price(registry: Registry, name: str, job: JobSpec) -> Price:
    """One image's price on `name` at the size sent for the job's (a hosted model's default size
    where the job gives none)."""
    model = registry.get(name)
    if not model.hosted:
        return price(model, 0, 0)  # nothing, from LOCAL
    defaults = registry.defaults(name, None)
    width, height = job.width or defaults["width"], job.height or defaults["height"]
    sent = provider(model.kind).size(model, width, height)
    return price(model, sent.width or width, sent.height or height)
