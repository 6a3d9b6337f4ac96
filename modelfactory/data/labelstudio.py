"""Label Studio's formats, both ways, and plain CSV/JSONL corrections: the teacher's labels go out for review
and the reviewed labels come back. The file shapes read and written are in docs/labelling.md; every problem is
reported per row, and nothing is unpickled.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from ..errors import MFError
from .ingest import records_jsonl
from .labels import Correction, review_queue, with_provenance

FROM_NAME = "label"  # the Choices control's name in the labeling config


def input_role(df: pd.DataFrame) -> str:
    """The column a reviewer looks at: `image` for image rows, else `text`."""
    for role in ("image", "text"):
        if role in df.columns:
            return role
    raise MFError("this dataset has neither a text nor an image column to review")


def _data_uri(data: bytes) -> str:
    kind = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else (
        "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def choice_result(label: str, to_name: str, result_id: str) -> dict[str, Any]:
    return {"id": result_id, "from_name": FROM_NAME, "to_name": to_name, "type": "choices",
            "value": {"choices": [label]}}


def export_tasks(df: pd.DataFrame, *, rows: str = "queue", strategy: str = "least-confidence",
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Label Studio tasks with the teacher's predictions pre-filled: the review queue, most uncertain first
    (`rows="queue"`), or every row (`"all"`, in id order; reviewed labels are pre-filled as predictions too,
    with model_version `human`/`import`)."""
    if rows not in ("queue", "all"):
        raise MFError(f"unknown row selection '{rows}' (use 'queue' or 'all')")
    df = with_provenance(df)
    role = input_role(df)
    chosen = review_queue(df, strategy) if rows == "queue" else df.sort_values("mf_id")
    if limit is not None:
        chosen = chosen.head(limit)
    tasks = []
    for row in chosen.to_dict("records"):
        value = row[role]
        data = {role: _data_uri(value) if isinstance(value, bytes | bytearray) else str(value),
                "mf_id": int(row["mf_id"])}
        task: dict[str, Any] = {"data": data, "predictions": []}
        source = row.get("label_source")
        if rows == "all" and isinstance(source, str) and source != "teacher" and isinstance(row.get("label"), str):
            task["predictions"].append({"model_version": source, "score": 1.0,
                                        "result": [choice_result(str(row["label"]), role, f"mf{data['mf_id']}")]})
        elif isinstance(row.get("pred_label"), str):
            task["predictions"].append({"model_version": str(row.get("label_model") or "teacher"),
                                        "score": float(row["label_confidence"]),
                                        "result": [choice_result(row["pred_label"], role, f"mf{data['mf_id']}")]})
        tasks.append(task)
    return tasks


def labeling_config(role: str, labels: Sequence[str]) -> str:
    """The Label Studio labeling config that matches `export_tasks` (paste it into the project's settings)."""
    obj = '<Image name="image" value="$image"/>' if role == "image" else '<Text name="text" value="$text"/>'
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (f'<View>\n  {obj}\n  <Choices name="{FROM_NAME}" toName="{role}" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


# --- reading reviews back -------------------------------------------------------------------------------------
def read_corrections(path: str | Path) -> tuple[list[Correction], list[str]]:
    """Reviewed labels from a Label Studio JSON export (or JSON-MIN), or a CSV/JSONL of `mf_id,label`; and
    every row-level error. A file that cannot be read at all is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MFError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [f"{path.name}: not UTF-8 text"]
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _from_json(text, path.name)
        if suffix in (".jsonl", ".ndjson"):
            return _from_jsonl(text, path.name)
        if suffix in (".csv", ".tsv"):
            return _from_csv(text, path.name, "\t" if suffix == ".tsv" else ",")
    except RecursionError:  # JSON nested thousands deep
        return [], [f"{path.name}: JSON nested too deeply"]
    except csv.Error as e:  # a field past the csv module's limit, ...
        return [], [f"{path.name}: not a readable CSV ({e})"]
    raise MFError(f"{path}: unsupported file type '{path.suffix}' (use a Label Studio .json export, or a "
                  ".csv/.jsonl with mf_id and label columns)")


def _row_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _flat(obj: dict, where: str) -> tuple[Correction | None, str | None]:
    """A `{mf_id, label}` object (JSONL row, JSON-MIN task)."""
    mf_id = _row_id(obj.get("mf_id"))
    if mf_id is None:
        return None, f"{where}: no integer 'mf_id' (the row id `mf label export` wrote)"
    label = obj.get("label")
    if isinstance(label, dict) and isinstance(label.get("choices"), list):  # JSON-MIN with several choices
        label = label["choices"]
    if isinstance(label, list):
        label = label[0] if len(label) == 1 else None
    if not isinstance(label, str) or not label.strip():
        return None, f"{where}: no single 'label' string"
    return Correction(mf_id, label.strip(), where), None


def _from_json(text: str, name: str) -> tuple[list[Correction], list[str]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return [], [f"{name}:{e.lineno}: invalid JSON ({e.msg})"]
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        return [], [f"{name}: expected a JSON list of Label Studio tasks"]
    out, errors = [], []
    newest: dict[int, tuple[tuple, Correction]] = {}  # JSON-MIN: mf_id -> (its newest annotation's time, choice)
    for i, task in enumerate(obj, start=1):
        where = f"{name}: task #{i}" + (f" (id {task.get('id')})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict):
            errors.append(f"{where}: not a JSON object")
            continue
        if "data" not in task:  # JSON-MIN: the data fields and the choice at the top level
            c, e = _flat(task, where)
            if c is not None:  # one object per annotation (Label Studio lists the newest first): newest wins
                when = (str(task.get("updated_at") or task.get("created_at") or ""),
                        _row_id(task.get("annotation_id")) or 0)
                if c.mf_id not in newest or when >= newest[c.mf_id][0]:
                    newest[c.mf_id] = (when, c)
                continue
        else:
            c, e = _from_task(task, where)
        if e:
            errors.append(e)
        elif c is not None:
            out.append(c)
    return out + [c for _, c in newest.values()], errors


def _from_task(task: dict, where: str) -> tuple[Correction | None, str | None]:
    """One Label Studio task of a JSON export: its newest kept annotation's choice, or None (not reviewed)."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None, f"{where}: 'data' is not an object"
    mf_id = _row_id(data.get("mf_id"))
    if mf_id is None:
        return None, f"{where}: no integer data.mf_id (export the tasks with `mf label export` first)"
    annotations = task.get("annotations", task.get("completions", []))
    if not isinstance(annotations, list):
        return None, f"{where}: 'annotations' is not a list"
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not kept:
        return None, None  # nobody reviewed it (or the review was cancelled): no change
    kept.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    result = kept[-1].get("result")
    if not isinstance(result, list):
        return None, f"{where}: the annotation's 'result' is not a list"
    choices = [r.get("value", {}).get("choices") for r in result
               if isinstance(r, dict) and r.get("type") == "choices" and isinstance(r.get("value"), dict)]
    choices = [c for c in choices if isinstance(c, list)]
    if not choices:
        return None, None  # an annotation without a choice (e.g. skipped): no change
    if len(choices) > 1 or len(choices[0]) != 1 or not isinstance(choices[0][0], str):
        return None, f"{where}: expected exactly one choice, got {choices}"
    return Correction(mf_id, choices[0][0].strip(), where), None


def _from_jsonl(text: str, name: str) -> tuple[list[Correction], list[str]]:
    out, errors = [], []
    for i, obj in records_jsonl(text):  # the same line reader (and messages) as `mf data add`
        if "__error__" in obj:
            errors.append(f"{name}:{i}: {obj['__error__']}")
            continue
        c, e = _flat(obj, f"{name}:{i}")
        if e:
            errors.append(e)
        else:
            out.append(c)
    return out, errors


def _from_csv(text: str, name: str, delimiter: str) -> tuple[list[Correction], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = {"mf_id", "label"} - set(reader.fieldnames or [])
    if missing:
        return [], [f"{name}:1: no column {', '.join(sorted(missing))}; columns are: "
                    f"{', '.join(reader.fieldnames or []) or 'none'}"]
    out, errors = [], []
    line = reader.line_num
    for row in reader:
        where = f"{name}:{line + 1}"
        line = reader.line_num
        c, e = _flat(row, where)
        if e:
            errors.append(e)
        else:
            out.append(c)
    return out, errors


# --- whole files, as the CLI uses them ---------------------------------------------------------------------------
def export_file(dataset: str, out: str | Path, *, rows: str = "queue", strategy: str = "least-confidence",
                limit: int | None = None) -> tuple[Path, Path, int]:
    """Write `dataset`'s tasks to `out` (JSON) and the matching labeling config beside it (`<out>.xml`);
    (json path, config path, tasks written)."""
    from . import labels, versions

    ref = versions.resolve(dataset)
    df = versions.load_rows(ref.artifact_id)
    tasks = export_tasks(df, rows=rows, strategy=strategy, limit=limit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1))
    config = out.with_suffix(".xml")
    config.write_text(labeling_config(input_role(df), labels.label_set(df)))
    return out, config, len(tasks)


def import_file(dataset: str, path: str | Path):
    """Reviewed labels (Label Studio export, CSV or JSONL) as a new version of `dataset`: (the version, rows
    labeled). Any bad row stops it, every one listed with where it is, and no version is made."""
    from . import labels, versions

    parent = versions.resolve(dataset)
    df = versions.load_rows(parent.artifact_id)
    corrections, errors = read_corrections(path)
    if not errors:
        df, errors = labels.apply_corrections(df, corrections)
    if errors:
        shown = "\n".join(errors[:20]) + (f"\n... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise MFError(f"{len(errors)} bad row(s) in {path}; no version was made:\n{shown}")
    if not corrections:
        raise MFError(f"{path}: no reviewed labels in it (no annotation with a choice); no version was made")
    new = versions.derive(parent, df, "import", {"source": str(Path(path).resolve()), "rows": len(corrections)})
    return new, len(corrections)
