"""policies: the software under test.  Scenarios, their policies, and the mutants.

It knows nothing of how it is driven.  A scenario is registered by name;
users bring their own by module name or file path (`load_module`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from policies.scenario import Arg, Needs, Operation, Policy, Scenario, World, mutant

_REGISTRY: dict[str, Scenario] = {}
_BUILTIN = (
    "policies.primitives.locks",
    "policies.primitives.refcount",
    "policies.primitives.pipe",
    "policies.primitives.seqcount",
    "policies.primitives.percpu_ref",
    "policies.primitives.context",
    "policies.vma_lookup",
)
_loaded = False


def register(scenario: Scenario) -> Scenario:
    if not scenario.name:
        raise ValueError(f"{type(scenario).__name__} has no name")
    known = _REGISTRY.get(scenario.name)
    if known is not None and type(known) is not type(scenario):
        raise ValueError(f"scenario {scenario.name!r} is already registered")
    _REGISTRY[scenario.name] = scenario
    return scenario


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _BUILTIN:
            importlib.import_module(mod)


def scenarios() -> dict[str, Scenario]:
    _load_builtins()
    return dict(_REGISTRY)


def get_scenario(name: str) -> Scenario:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise LookupError(f"unknown scenario {name!r} (known: {known})") from None


def load_module(spec: str) -> None:
    """Import a user's module (dotted name or .py path) whose import registers scenarios."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.exists(path):
            raise LookupError(f"policy module {spec!r} does not exist")
        name = "mmtorture_user_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules:
            return
        s = importlib.util.spec_from_file_location(name, path)
        if s is None or s.loader is None:
            raise LookupError(f"cannot import policy module {spec!r}")
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            raise LookupError(f"cannot import policy module {spec!r}: {e}") from None


__all__ = [
    "Arg", "Needs", "Operation", "Policy", "Scenario", "World", "get_scenario", "load_module", "mutant",
    "register", "scenarios",
]
