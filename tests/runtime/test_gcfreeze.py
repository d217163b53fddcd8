"""Start-up objects are frozen once, after start-up: a full collection then skips them. In a process of its
own (freezing is process-wide)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from agentmesh.runtime.gcfreeze import freeze_after_startup
before = gc.get_freeze_count()
first, again = freeze_after_startup(), freeze_after_startup()
print(before, first, again, gc.get_freeze_count() > before)
"""


def test_the_first_call_freezes_and_later_ones_do_nothing() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["0", "True", "False", "True"]
