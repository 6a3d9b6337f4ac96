"""Task families, one file each. `get(name)` is the only way the factory, compute and serving layers see them.

Families are discovered, never listed: every module of this package that defines a concrete, named `Family`
subclass (a `TaskFamily` or a `GenerativeFamily`) contributes it, and so does any installed package that
declares one under the `modelfactory.tasks` entry-point group
(`[project.entry-points."modelfactory.tasks"] my-task = "my_pkg.module:MyTask"`). Adding a family is adding a
file (or a package); nothing else in the platform changes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from ..errors import MFError
from .base import Bundle, Encoded, Family, GenerativeFamily, Outputs, Predictor, TaskFamily, read_meta

ENTRY_POINT_GROUP = "modelfactory.tasks"


def _concrete_families(module) -> list[type[Family]]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Family) and not inspect.isabstract(obj) and obj.__module__ == module.__name__
            and isinstance(getattr(obj, "name", None), str)]


@cache
def _families() -> dict[str, type[Family]]:
    found: dict[str, type[Family]] = {}

    def add(cls: type[Family], origin: str) -> None:
        if cls.name in found and found[cls.name] is not cls:
            raise MFError(f"two task families are named '{cls.name}': {found[cls.name].__module__} and {origin}")
        found[cls.name] = cls

    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in _concrete_families(module):
            add(cls, module.__name__)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (inspect.isclass(cls) and issubclass(cls, Family)):
            raise MFError(f"entry point '{ep.name}' = '{ep.value}' ({ENTRY_POINT_GROUP}) is not a task family class")
        add(cls, ep.value)
    return found


def names() -> list[str]:
    return sorted(_families())


def get(name: str) -> Family:
    try:
        return _families()[name]()
    except KeyError:
        raise MFError(f"unknown task '{name}'; known tasks: {', '.join(names())}") from None


def refresh() -> None:
    """Forget the discovered families (after installing a plugin package in the same process)."""
    _families.cache_clear()


__all__ = ["Bundle", "Encoded", "Family", "GenerativeFamily", "Outputs", "Predictor", "TaskFamily", "get", "names",
           "read_meta", "refresh"]
