"""Workers on a Ray cluster: each model's worker process runs on some node, inside an actor.

The daemon, its queue and its session stay on the head. `RayWorker` is a WorkerProcess whose
process is `RemoteProcess`: the actor (`NodeWorker`) starts the same `python -m
diffdeck.engines.worker` on its node and relays its wire lines and stderr as they come; the files a
job message names (a leg's inputs) go to the node with it, and the files a worker wrote (an image,
a stage's latents) come back through Ray's object store and are written into the session's images
folder under their own names, so the record reads as a local render's. An actor that dies (its node
lost, `ray.kill`) reads as a worker killed by SIGKILL: the Dispatcher's crash rules apply.

UI side: no torch. Ray must be installed (`pip install 'diffdeck[ray]'`) and `ray.init` called.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any, Collection

import ray
from diffdeck.engines.core.files import write_whole
from diffdeck.engines.core.spec import ModelSpec
from diffdeck.engines.core.worker_protocol import Intervals, ProtocolError, decode, encode
from diffdeck.engines.queue.devices import Device
from diffdeck.engines.queue.worker_handles import WorkerError, WorkerProcess, spawn_worker
from ray.exceptions import RayError

FILE_KEYS = ("path", "latents")  # where an image or stage_image message names a file its worker wrote
CONNECT_TIMEOUT_S = 5.0  # to reach a Ray head before Ray's own minutes of retrying
START_TIMEOUT_S = 120.0  # for a node to give a new actor what it asks for and start it


def join_cluster(address: str | None) -> str:
    """Connect to the Ray cluster at `address` (None: a local one, started now); what it holds, in words.
    ConnectionError at once when nothing listens at a HOST:PORT address: Ray itself would retry for minutes."""
    if address and (host_port := _host_port(address)):
        try:
            socket.create_connection(host_port, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ConnectionError(f"nothing answers at {host_port[0]}:{host_port[1]} ({e.strerror or e}); "
                                  "is `ray start --head` running there?") from None
    ray.init(address=address, include_dashboard=False, configure_logging=False)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return f"Ray cluster of {len(nodes)} node(s), {total.get('CPU', 0):g} CPU(s), {total.get('GPU', 0):g} GPU(s)"


def cluster_slots() -> list[Device]:
    """The Dispatcher's devices on the cluster, each running one job at a time: one a cluster GPU,
    else one a node."""
    return slots(int(ray.cluster_resources().get("GPU", 0)), sum(1 for node in ray.nodes() if node.get("Alive")))


def slots(gpus: int, nodes: int) -> list[Device]:
    """`gpus` GPU slots, else one slot a node. A GPU slot keeps one model warm at a time: each warm
    model's actor holds a whole GPU, so with more warm than the cluster has GPUs the next load would
    wait for ever. Ray reports no GPU's memory (no budget to fit several in) and pins each actor
    to a GPU of its own: `visible` only marks the slot as a GPU (what models.yaml pins name), and
    RayWorker ignores it."""
    if gpus:
        return [Device(i, f"Ray cluster GPU {i}", visible=str(i), one_model=True) for i in range(gpus)]
    return [Device(i, f"Ray cluster node {i}") for i in range(max(nodes, 1))]


def _host_port(address: str) -> tuple[str, int] | None:
    """HOST and PORT of `HOST:PORT` or `ray://HOST:PORT`; None for what Ray resolves itself (auto)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def actor_options(spec: ModelSpec, cluster_gpus: float) -> dict[str, Any]:
    """What a model's actor asks of the cluster: a GPU where the model wants one (`auto`: where the
    cluster has any), else a CPU and the model's stated memory."""
    wants_gpu = spec.device.startswith("cuda") or bool(spec.gpus) or (spec.device == "auto" and cluster_gpus > 0)
    if wants_gpu and not cluster_gpus:
        raise WorkerError(f"model {spec.name!r} asks for a GPU and the Ray cluster has none")
    if wants_gpu:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1, **({"memory": int(spec.memory_gb * 1e9)} if spec.memory_gb else {})}


class RayWorker(WorkerProcess):
    """A model's worker in an actor on whichever node Ray places it; WorkerProcess's states and messages."""

    @property
    def pid(self) -> int | None:
        return None  # on another machine, maybe: no process here to sample or signal

    @property
    def node(self) -> str:
        """The host name of the node it runs on."""
        return self._proc.node if self._proc else ""

    @property
    def actor(self) -> Any:
        """Its Ray actor (`ray.kill` it, and the job it runs fails as a crash)."""
        return self._proc.actor if self._proc else None

    async def _launch(self) -> RemoteProcess:
        options = actor_options(self.spec, ray.cluster_resources().get("GPU", 0))
        return await RemoteProcess.start(self.spec, self._intervals, options, self._key_variables)


class RemoteProcess:
    """The head's side of a NodeWorker, shaped as the asyncio subprocess WorkerProcess reads:
    stdin, stdout lines, stderr chunks, wait, kill."""

    def __init__(self, actor: Any):
        self.actor = actor
        self._out_dir: Path | None = None  # the job's images folder, from its job message
        self._lines: asyncio.Queue[bytes] = asyncio.Queue()
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._outbox: asyncio.Queue[tuple[dict[str, Any], dict[str, bytes]] | None] = asyncio.Queue()
        self.returncode: int | None = None
        self.pid: int | None = None
        self.node = ""
        self.stdin, self.stdout, self.stderr = self, self, self
        # Ray keeps no order among an async actor's calls: the head's messages go one after another.
        self._pumps = (asyncio.create_task(self._relay()), asyncio.create_task(self._feed()))

    @classmethod
    async def start(cls, spec: ModelSpec, intervals: Intervals, options: dict[str, Any],
                    key_variables: Collection[str] = (), timeout_s: float = START_TIMEOUT_S) -> RemoteProcess:
        """WorkerError where no node gives the actor what it asks for within `timeout_s` (Ray
        would leave it pending for ever), or where it fails to start. `key_variables`: as spawn_worker's."""
        actor = NodeWorker.options(**options).remote()
        try:
            started = await asyncio.wait_for(
                actor.start.remote(spec.to_dict(), intervals.progress_s, intervals.preview_s, sorted(key_variables)),
                timeout_s)
        except asyncio.TimeoutError:
            ray.kill(actor)
            asked = "a GPU" if options.get("num_gpus") else f"what its actor asks for ({options})"
            raise WorkerError(f"no Ray node could give model {spec.name!r} {asked} within {timeout_s:g} s "
                              "(ray status shows what is free)") from None
        except RayError as e:
            ray.kill(actor)
            raise WorkerError(f"could not start a worker for {spec.name!r} on the Ray cluster: {e}") from None
        process = cls(actor)
        process.node, process.pid = started["node"], started["pid"]
        return process

    # stdin

    def write(self, line: bytes) -> None:
        message = decode(line)
        files: dict[str, bytes] = {}
        if message["type"] == "job":
            self._out_dir = Path(message["out_dir"])
            self._out_dir.mkdir(parents=True, exist_ok=True)  # as a local worker does
            for entry in (message.get("inputs") or {}).values():
                for path in entry.values():
                    with contextlib.suppress(OSError):  # missing: the worker says so, as a local one would
                        files[path] = Path(path).read_bytes()
        self._outbox.put_nowait((message, files))

    def close(self) -> None:
        self._outbox.put_nowait(None)

    async def _feed(self) -> None:
        with contextlib.suppress(RayError):  # the actor is gone: _relay says so
            while (item := await self._outbox.get()) is not None:
                await self.actor.send.remote(*item)
            await self.actor.close_input.remote()

    # stdout, stderr, exit

    def __aiter__(self) -> RemoteProcess:
        return self

    async def __anext__(self) -> bytes:
        line = await self._lines.get()
        if not line:
            raise StopAsyncIteration
        return line

    async def read(self, _size: int) -> bytes:
        return await self._chunks.get()

    async def wait(self) -> int:
        await self._ended.wait()
        return self.returncode

    def kill(self) -> None:
        ray.kill(self.actor)  # the worker dies with it (it dies with its parent)

    async def _relay(self) -> None:
        try:
            while True:
                for kind, payload, files in await self.actor.take.remote():
                    if kind == "exit":
                        self.returncode = payload
                        return
                    if kind == "err":
                        self._chunks.put_nowait(payload)
                    else:
                        self._lines.put_nowait(await self._land(payload, files) if files else payload)
        except RayError as e:
            self.returncode = -signal.SIGKILL
            self._chunks.put_nowait(f"\n[diffdeck] the worker's Ray actor on {self.node or 'its node'} died: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}\n".encode())
        finally:
            self._lines.put_nowait(b"")
            self._chunks.put_nowait(b"")
            self._ended.set()
            self._pumps[1].cancel()
            with contextlib.suppress(RayError):
                ray.kill(self.actor)

    async def _land(self, line: bytes, files: dict[str, Any]) -> bytes:
        """An image or stage_image message, its files written into the images folder here; one
        that cannot be written fails the job, as the worker's own failed write would."""
        message = decode(line)
        for key, ref in files.items():
            target = self._out_dir / Path(message[key]).name
            try:
                await asyncio.to_thread(write_whole, target, await ref)
            except (OSError, RayError) as e:
                self.write(encode("cancel", id=message["id"]))
                return encode("failed", id=message["id"], error=f"could not write {target}: {e}", kind="error")
            message[key] = str(target)
        return encode(message.pop("type"), **message)


@ray.remote(max_restarts=0)
class NodeWorker:
    """On a node: one worker process, its wire lines and stderr kept for the head to take."""

    async def start(self, spec: dict[str, Any], progress_s: float, preview_s: float,
                    key_variables: list[str]) -> dict[str, Any]:
        self.node = socket.gethostname()
        self.scratch = Path(tempfile.mkdtemp(prefix="diffdeck-ray-"))  # what its jobs write and read here
        self.outbox: asyncio.Queue[tuple[str, Any, dict[str, Any]]] = asyncio.Queue()
        self.proc = await spawn_worker(ModelSpec.from_dict(spec), Intervals(progress_s, preview_s),
                                       key_variables=key_variables)
        self.relays = asyncio.gather(self._relay_lines(), self._relay_stderr())
        asyncio.get_running_loop().create_task(self._report_exit())
        return {"node": self.node, "pid": self.proc.pid}

    async def send(self, message: dict[str, Any], files: dict[str, bytes]) -> None:
        if message["type"] == "job":
            message["out_dir"] = str(self.scratch)
            here = {}
            for n, (path, data) in enumerate(files.items()):
                here[path] = self.scratch / f"input-{n}-{Path(path).name}"
                here[path].write_bytes(data)
            message["inputs"] = {index: {key: str(here.get(path, path)) for key, path in entry.items()}
                                 for index, entry in (message.get("inputs") or {}).items()}
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(encode(message.pop("type"), **message))

    async def close_input(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.close()

    async def take(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """What came since the last take (waits for something)."""
        taken = [await self.outbox.get()]
        while not self.outbox.empty():
            taken.append(self.outbox.get_nowait())
        return taken

    async def _relay_lines(self) -> None:
        async for line in self.proc.stdout:
            self.outbox.put_nowait(self._outgoing(line))

    async def _relay_stderr(self) -> None:
        while chunk := await self.proc.stderr.read(1 << 16):
            self.outbox.put_nowait(("err", chunk, {}))

    async def _report_exit(self) -> None:
        await self.relays
        returncode = await self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.outbox.put_nowait(("exit", returncode, {}))

    def _outgoing(self, line: bytes) -> tuple[str, bytes, dict[str, Any]]:
        """A wire line for the head: a file the worker wrote goes into the object store (and
        leaves this node); a failed load names this node."""
        try:
            message = decode(line)
        except ProtocolError:
            return "out", line, {}  # the head says what is wrong with it
        files = {}
        if message["type"] in ("image", "stage_image"):
            for key in FILE_KEYS:
                if isinstance(message.get(key), str):
                    path = Path(message[key])
                    with contextlib.suppress(OSError):  # unreadable: the record names a file the head lacks
                        files[key] = ray.put(path.read_bytes())
                        path.unlink()
        elif message["type"] == "load_failed":
            message["error"] = f"on Ray node {self.node}: {message['error']}"
            line = encode(message.pop("type"), **message)
        return "out", line, files
