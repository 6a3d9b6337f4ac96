"""The model registry: versions, aliases (prod, latest), metrics, lineage and model cards."""

from .registry import ModelRef, by_order, contract_metrics, list_models, owner, promote, register, resolve

__all__ = ["ModelRef", "by_order", "contract_metrics", "list_models", "owner", "promote", "register", "resolve"]
