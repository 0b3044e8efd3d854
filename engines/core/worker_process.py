"""What every worker process does around its model, the local one (diffdeck.engines.worker) as the
hosted one (diffdeck.engines.hosted): its arguments, stdout kept for the protocol, and never
outliving the Dispatcher that started it. No torch here.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any, BinaryIO

from diffdeck.engines.core.worker_protocol import Intervals, ProtocolError, decode, encode

ORPHANED = 4  # exit status: the Dispatcher is gone
ORPHAN_GRACE_S = 2.0  # after its input ends, for the running job to stop cleanly
PR_SET_PDEATHSIG = 1


class Wire:
    """The protocol side of stdout."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message_type: str, /, **fields: Any) -> None:
        data = encode(message_type, **fields)
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


def command(line: bytes, log: logging.Logger) -> dict[str, Any] | None:
    """One line of the Dispatcher's, decoded; None (logged) for one that is not a message."""
    try:
        return decode(line)
    except ProtocolError as e:
        log.error("ignored: %s", e)
        return None


def claim_stdout() -> BinaryIO:
    """stdout carries protocol messages and nothing else: file descriptor 1 is pointed at stderr,
    so a stray print from any library lands in the log, not on the wire."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb")  # buffered: a flush writes whole lines, even if interrupted


def die_with_parent(parent: int | None) -> None:
    """Have the kernel kill this worker when the process that started it dies (Linux): a
    `kill -9` of diffdeck must not leave a worker rendering for minutes. Strictly, with the
    thread that started it: workers are started from the Dispatcher's event loop thread.
    `parent` is that process's pid, to catch a parent that died before the call."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(ORPHANED)


def exit_soon(grace_s: float = ORPHAN_GRACE_S) -> None:
    """The input ended without a shutdown: nobody reads what this worker makes. The running job
    is cancelled already; whatever still runs after `grace_s` (a model load, one huge kernel)
    ends with the process."""
    timer = threading.Timer(grace_s, os._exit, (ORPHANED,))
    timer.daemon = True
    timer.start()


def worker_arguments(prog: str, argv: list[str] | None) -> argparse.Namespace:
    """`--model JSON [--progress-interval S] [--preview-interval S] [--parent PID]`, the arguments
    spawn_worker gives every worker."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--model", required=True, help="the ModelSpec as JSON")
    defaults = Intervals()
    parser.add_argument("--progress-interval", type=float, default=defaults.progress_s,
                        help="seconds between step messages")
    parser.add_argument("--preview-interval", type=float, default=defaults.preview_s,
                        help="seconds between previews")
    parser.add_argument("--parent", type=int, help="the pid of the process that started it: it dies with it")
    return parser.parse_args(argv)


def rounded(timings: dict[str, float]) -> dict[str, float]:
    """Seconds as the wire carries them: to a tenth of a millisecond."""
    return {k: round(v, 4) for k, v in timings.items()}
