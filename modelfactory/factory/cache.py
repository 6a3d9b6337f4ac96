"""Stage cache keys: sha256 of (stage name, stage version, params, input artifact ids).

Params whose name starts with '_' steer how a stage runs (a local path, a checkpoint interval) but not what it
produces, so they stay out of the key.
"""

from __future__ import annotations

from typing import Any

from ..artifacts import content_hash


def stage_key(stage: str, version: int, params: dict[str, Any], inputs: dict[str, str]) -> str:
    hashed = {k: v for k, v in params.items() if not k.startswith("_")}
    return content_hash({"stage": stage, "version": version, "params": hashed, "inputs": inputs})
