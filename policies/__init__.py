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
from shm.checks import Check, define_check
from shm.layout import Region

_REGISTRY: dict[str, Scenario] = {}
_BUILTIN = (
    "policies.primitives.locks",
    "policies.primitives.rwsem",
    "policies.primitives.refcount",
    "policies.primitives.pipe",
    "policies.primitives.seqcount",
    "policies.primitives.percpu_ref",
    "policies.primitives.context",
    "policies.vma_lookup",
    "policies.pte_ref",
)
_loaded = False


POLICY_MODULE_ENV = "MMTORTURE_POLICY_MODULE"
_USER_PREFIX = "mmtorture_user_"


_ORIGIN: dict[str, tuple[str, str]] = {}  # scenario -> (file of the module that registered it, how to load it)


def register(scenario: Scenario) -> Scenario:
    """Register a scenario by name.  The same module loaded twice (by name and by path)
    registers once; another module registering a taken name is an error."""
    if not scenario.name:
        raise ValueError(f"{type(scenario).__name__} has no name")
    caller = sys._getframe(1).f_globals
    path = os.path.realpath(caller.get("__file__") or "")
    name = caller.get("__name__", "")
    spec = name if caller.get("__package__") and not name.startswith(_USER_PREFIX) else path
    known = _REGISTRY.get(scenario.name)
    if known is not None and known is not scenario:
        if _ORIGIN[scenario.name][0] == path:
            return known
        raise ValueError(f"scenario {scenario.name!r} is already registered by {_ORIGIN[scenario.name][0]}")
    _REGISTRY[scenario.name] = scenario
    _ORIGIN[scenario.name] = (path, spec)
    return scenario


def scenario_module(name: str) -> str | None:
    """How to load the module that registered a scenario (a path or a dotted name); None for the
    built-in ones.  A report records it, so that a replay needs no --policy-module."""
    _load_builtins()
    spec = _ORIGIN.get(name, ("", ""))[1]
    return None if not spec or spec.startswith("policies.") else spec


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
        raise LookupError(
            f"unknown scenario {name!r} (known: {known}; a scenario of your own is loaded "
            f"with --policy-module FILE.py or {POLICY_MODULE_ENV})"
        ) from None


def env_modules() -> list[str]:
    """The policy modules named by MMTORTURE_POLICY_MODULE (several separated by os.pathsep)."""
    return [m for m in os.environ.get(POLICY_MODULE_ENV, "").split(os.pathsep) if m]


def module_spec(spec: str) -> str:
    """How a report records a module: an absolute path for a file, the name for a module."""
    return os.path.abspath(spec) if spec.endswith(".py") or os.sep in spec else spec


def load_module(spec: str) -> None:
    """Import a user's module (dotted name or .py path) whose import registers scenarios."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.exists(path):
            raise LookupError(f"policy module {spec!r} does not exist")
        real = os.path.realpath(path)
        if any(os.path.realpath(getattr(m, "__file__", None) or "") == real for m in list(sys.modules.values())):
            return
        name = _USER_PREFIX + os.path.splitext(os.path.basename(path))[0]
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
    "POLICY_MODULE_ENV",
    "Arg",
    "Check",
    "Needs",
    "Operation",
    "Policy",
    "Region",
    "Scenario",
    "World",
    "define_check",
    "env_modules",
    "get_scenario",
    "load_module",
    "module_spec",
    "mutant",
    "register",
    "scenario_module",
    "scenarios",
]
