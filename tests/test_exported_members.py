"""The public API is what agentmesh/__init__.py exports, each name importable and documented."""

from __future__ import annotations

import agentmesh


def test_all_exported_members_exist_and_are_documented() -> None:
    assert len(set(agentmesh.__all__)) == len(agentmesh.__all__)
    for name in agentmesh.__all__:
        member = getattr(agentmesh, name)
        if callable(member):
            assert member.__doc__, f"agentmesh.{name} has no docstring"


def test_private_modules_are_not_exported() -> None:
    assert not [n for n in agentmesh.__all__ if n.startswith("_") and n != "__version__"]
