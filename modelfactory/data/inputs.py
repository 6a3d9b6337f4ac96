"""Inputs to predict on, from a file (`mf predict --file`): JSONL rows with a 'text' field, or plain lines (texts
or image paths). A bad line is named by file and line number."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MFError


def read_inputs(path: Path) -> list[str]:
    if not path.is_file():
        raise MFError(f"{path}: no such file")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".ndjson") or line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MFError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise MFError(f"{path}:{i}: expected an object with a 'text' string")
            out.append(obj["text"])
        else:
            out.append(line)
    return out
