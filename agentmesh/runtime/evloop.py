"""The event loop a member process runs on: uvloop when it is installed (the ``fast`` extra), else asyncio's.

Why: grpc.aio runs on any asyncio loop, and most of a call's CPU in a member is the loop's own work
(ready handles, futures, the poller's wake-ups) around grpc's. On uvloop an agent serving the whole chain
spent ~15% less CPU per call (805 -> 688 us, closed loop on the 2-vCPU bench machine; ``make bench``
variant 3 against variant 9 says how much of that bare grpc.aio gains too). The bridge has run on uvloop
through uvicorn all along.

``AGENTMESH_LOOP`` chooses, per process: ``auto`` (the default: uvloop when it can be imported), ``uvloop``
(an error if it cannot) or ``asyncio`` (asyncio's own loop, e.g. to rule the loop out while debugging).
:func:`loop_factory` is the decision, :func:`choose` reads it from the environment: a command calls it
before it does anything (a join, a key written), so a bad value is one line and nothing done;
:func:`run` runs a coroutine on the loop chosen.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from agentmesh.errors import ConfigError

__all__ = ["ENV", "LOOPS", "LoopFactory", "choose", "loop_factory", "run"]

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")
ENV = "AGENTMESH_LOOP"
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop() -> LoopFactory | None:
    try:
        import uvloop
    except ImportError:  # not installed, or installed but broken (a missing shared library...)
        return None
    return uvloop.new_event_loop


def loop_factory(choice: str, *, uvloop: Callable[[], LoopFactory | None] = _uvloop) -> LoopFactory | None:
    """The loop factory for ``choice`` (one of :data:`LOOPS`); None means asyncio's default loop.
    ``uvloop``: uvloop's factory, None when it cannot be imported. Raises ConfigError for another
    value, or for ``uvloop`` when it cannot be imported."""
    if choice not in LOOPS:
        raise ConfigError(f"{ENV}={choice[:32]!r}: expected one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return None
    found = uvloop()
    if found is None and choice == "uvloop":
        raise ConfigError(f"{ENV}=uvloop: uvloop is not installed or cannot be imported "
                          "(pip install 'agentmesh[fast]')")
    return found


def choose(environ: Mapping[str, str] = os.environ) -> LoopFactory | None:
    """The loop ``$AGENTMESH_LOOP`` names (``auto`` when unset); raises ConfigError for a bad value."""
    return loop_factory(environ.get(ENV, "auto"))


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """``asyncio.run(main)`` on a loop from ``factory`` (None: asyncio's)."""
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    except BaseException:
        main.close()  # (a no-op once it ran; else no "never awaited" warning after the error)
        raise
