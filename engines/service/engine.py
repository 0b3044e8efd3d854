"""The engine as its clients drive it: one typed call per command, the same whether the engine
runs in this process (diffdeck.engines.service.recorded_queue.RecordedQueue) or in a daemon
(diffdeck.engines.daemon.client.EngineClient, whose server answers each call with this one).

UI side: never imports torch.
"""

from __future__ import annotations

from typing import Any, Protocol

from diffdeck.engines.core.events import JobRecord
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.sets.variants import VariantSet


class Engine(Protocol):
    """A Dispatcher's commands, and what a user says of its images. Bad input raises (SpecError,
    RegistryError, ValueError in this process; DaemonError from a daemon), naming what is wrong."""

    async def submit(self, spec: JobSpec) -> JobRecord:
        """Queue a job; its record (the spec resolved: the model's defaults, seeds drawn)."""
        ...

    async def submit_set(self, variants: VariantSet) -> tuple[str, list[str]]:
        """Queue an A/B set or a grid; its id and its jobs' ids."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """False when the job had finished already."""
        ...

    async def cancel_all(self) -> int:
        """How many jobs were cancelled."""
        ...

    async def move(self, job_id: str, position: int) -> None:
        ...

    async def retry(self, job_id: str, force: bool = False) -> JobRecord:
        """Queue a failed, cancelled or (with `force`) held job again, with its seeds."""
        ...

    async def pause(self) -> None:
        """Start no new job after the running one."""
        ...

    async def resume(self) -> None:
        ...

    async def pick(self, set_id: str, image: int, left: str, right: str, winner: str | None) -> None:
        """Record which of a pair won: a job id, or "tie"; None takes the pick back."""
        ...

    async def rate(self, job_id: str, image: int, stars: int) -> None:
        """Record 1 to 5 stars; 0 takes the rating back."""
        ...

    async def state(self) -> dict[str, Any]:
        """The session, the queue, its jobs and workers, memory, telemetry (JSON's types)."""
        ...

    async def image(self, job_id: str, image: int, max_side: int | None = None) -> dict[str, str]:
        """One image of a job as base64 PNG: {"name", "png"}; whole, or fitted within `max_side` pixels."""
        ...
