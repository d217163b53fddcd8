"""The public API is what agentmesh/__init__.py exports, each name importable and documented."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import agentmesh


def test_all_exported_members_exist_and_are_documented() -> None:
    assert len(set(agentmesh.__all__)) == len(agentmesh.__all__)
    for name in agentmesh.__all__:
        member = getattr(agentmesh, name)
        if callable(member):
            assert member.__doc__, f"agentmesh.{name} has no docstring"


def test_private_modules_are_not_exported() -> None:
    assert not [n for n in agentmesh.__all__ if n.startswith("_") and n != "__version__"]


def _public_names(module: types.ModuleType) -> set[str]:
    """What ``from module import *`` would take without an ``__all__``: public, not a submodule."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
            and n != "annotations"}  # (from __future__ import annotations)


def test_the_package_exports_exactly_what_it_imports() -> None:
    """A name imported into agentmesh/__init__.py but left out of ``__all__`` (or the reverse) is
    caught here, not by a user whose ``from agentmesh import *`` lacks it (httpx's check)."""
    assert _public_names(agentmesh) == set(agentmesh.__all__) - {"__version__"}


@pytest.mark.parametrize("name", sorted(
    info.name for info in pkgutil.walk_packages(agentmesh.__path__, "agentmesh.")
    if not info.name.startswith("agentmesh.v1.")  # generated code (make proto)
))
def test_every_module_all_names_only_what_it_has(name: str) -> None:
    module = importlib.import_module(name)
    declared = getattr(module, "__all__", None)
    if declared is None:
        return
    assert len(set(declared)) == len(declared), f"{name}.__all__ repeats a name"
    missing = [n for n in declared if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"
