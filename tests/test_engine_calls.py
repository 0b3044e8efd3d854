"""One engine interface: the daemon answers exactly the calls its Protocol names, and the engine
in this process and the daemon's client each implement every one of them, with its signature."""

import inspect

from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.server import CALLS
from diffdeck.engines.daemon.wire import DaemonCalls
from diffdeck.engines.service.engine import Engine
from diffdeck.engines.service.recorded_queue import RecordedQueue


def calls_of(protocol: type) -> set[str]:
    return {name for name, value in inspect.getmembers(protocol, inspect.iscoroutinefunction)
            if not name.startswith("_")}


def test_the_dispatch_table_names_the_calls_of_the_protocol():
    assert calls_of(Engine) and calls_of(Engine) < calls_of(DaemonCalls)
    assert set(CALLS) == calls_of(DaemonCalls)


def test_both_engines_implement_every_call_with_its_signature():
    for engine, protocol in ((RecordedQueue, Engine), (EngineClient, DaemonCalls)):
        for name in calls_of(protocol):
            assert name in vars(engine), f"{engine.__name__} does not implement {name}"
            assert inspect.signature(getattr(engine, name)) == inspect.signature(getattr(protocol, name)), name
