"""The model registry: versions, aliases (prod, latest), metrics, lineage and model cards."""

from .registry import ModelRef, list_models, promote, register, resolve

__all__ = ["ModelRef", "list_models", "promote", "register", "resolve"]
