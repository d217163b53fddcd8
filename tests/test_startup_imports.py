"""What a process imports at start-up: Redis only when a Redis backend is built (redisclient.py).

Importing ``redis`` costs ~200 ms (measured: ``agentmesh --version`` took 1.1 s with it, 0.6 s without);
every ``agentmesh`` command and every member paid it, Redis configured or not.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentmesh.errors import ConfigError
from agentmesh.ratelimit.redis import RedisLimiter


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_no_command_or_member_imports_redis_until_a_redis_backend_is_built() -> None:
    loaded = _modules_after("import agentmesh.cli.main as m\nm.build_parser()\nimport agentmesh.runtime.node")
    assert "agentmesh.runtime.node" in loaded and "agentmesh.ratelimit.redis" in loaded
    assert not {name for name in loaded if name == "redis" or name.startswith("redis.")}

    built = _modules_after("from agentmesh.ratelimit.redis import RedisLimiter\n"
                           "RedisLimiter('redis://127.0.0.1:1/0', [])")
    assert "redis.asyncio" in built


def test_a_url_redis_refuses_is_one_line_that_does_not_repeat_it() -> None:
    with pytest.raises(ConfigError) as e:
        RedisLimiter("redis://user:s3cret@host:notaport/0", [])
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
