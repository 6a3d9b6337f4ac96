"""Task families, one file each. `get(name)` is the only way the factory, compute and serving layers see them."""

from __future__ import annotations

from ..errors import MFError
from .base import Bundle, Encoded, Outputs, Predictor, TaskFamily, read_meta
from .text_classification import TextClassification

_FAMILIES: dict[str, type[TaskFamily]] = {cls.name: cls for cls in (TextClassification,)}


def names() -> list[str]:
    return sorted(_FAMILIES)


def get(name: str) -> TaskFamily:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise MFError(f"unknown task '{name}'; known tasks: {', '.join(names())}") from None


__all__ = ["Bundle", "Encoded", "Outputs", "Predictor", "TaskFamily", "get", "names", "read_meta"]
