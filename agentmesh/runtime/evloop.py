"""The event loop a member process runs on: uvloop when it is installed (the ``fast`` extra), else asyncio's.

Why: grpc.aio runs on any asyncio loop, and most of a call's CPU in a member is the loop's own work
(ready handles, futures, the poller's wake-ups) around grpc's. On uvloop an agent serving the whole chain
spent ~15% less CPU per call (805 -> 688 us, closed loop on the 2-vCPU bench machine; ``make bench``
variant 3 against variant 9 says how much of that bare grpc.aio gains too). The bridge has run on uvloop
through uvicorn all along.

``AGENTMESH_LOOP`` chooses, per process: ``auto`` (the default: uvloop when installed), ``uvloop`` (an
error if it is not installed) or ``asyncio`` (asyncio's own loop, e.g. to rule the loop out while
debugging). :func:`loop_factory` is the decision; :func:`run` runs a coroutine on its answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agentmesh.errors import ConfigError

__all__ = ["LOOPS", "loop_factory", "run"]

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")
ENV = "AGENTMESH_LOOP"


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str, *, uvloop_installed: bool | None = None) -> LoopFactory | None:
    """The loop factory for ``choice`` (one of :data:`LOOPS`); None means asyncio's default loop.
    Raises ConfigError for another value, or for ``uvloop`` when it is not installed."""
    if choice not in LOOPS:
        raise ConfigError(f"{ENV}={choice[:32]!r}: expected one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return None
    installed = importlib.util.find_spec("uvloop") is not None if uvloop_installed is None else uvloop_installed
    if not installed:
        if choice == "uvloop":
            raise ConfigError(f"{ENV}=uvloop: uvloop is not installed (pip install 'agentmesh[fast]')")
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (default: ``$AGENTMESH_LOOP``, else ``auto``)."""
    try:
        factory = loop_factory(os.environ.get(ENV, "auto") if choice is None else choice)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning after the error line
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
