"""Start-up objects out of the garbage collector's way: :func:`freeze_after_startup`.

A member's heap is mostly objects made while it starts (modules, classes, functions, grpc and
cryptography state, the mesh config, keys, policies) that live as long as the process. CPython's
cycle collector walks every one of them in each full (generation 2) collection, so a full collection
costs tens of milliseconds on a member-sized heap, and whatever call the event loop is running waits
for it. :func:`gc.freeze` moves every object tracked so far into a permanent generation that
collections skip: afterwards a full collection walks only what was made since. Measured with
``benchmarks/exportpause.py`` (a member-sized heap of ~70,000 objects, 1000 spans/s, 120 s, a 2-vCPU
machine): full collections took up to 60-80 ms each before, up to 5-10 ms after. They come more
often once frozen (the collector runs a full collection when the objects promoted since the last one
exceed a quarter of those it kept, and few are kept now), which the tail does not notice.

Call it once the process has finished starting (the server serves, the bridge is up, the client node
has started), not before: what is made after the call is collected as usual, so freezing early only
helps less. A frozen object is still freed when its last reference goes, but a reference cycle among
frozen objects never is: that is why the function collects first (start-up garbage is freed, not
kept), and why it freezes once per process. A second freeze, later, would keep for good the cycles of
whatever was alive then (calls in flight, a test's objects) and cost one more full collection.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_after_startup"]

_lock = threading.Lock()
_frozen = False


def freeze_after_startup() -> bool:
    """Collects once, then freezes every object tracked so far; True the first time, False after.

    Idempotent (see the module docstring for why): a process that starts several members (tests, an
    application with a server and client nodes) freezes at the first call only; later calls do
    nothing and cost nothing.
    """
    global _frozen
    with _lock:
        if _frozen:
            return False
        _frozen = True
    gc.collect()
    gc.freeze()
    return True
