"""Labels with provenance: which rows are labeled and by whom, pseudo-labels above a confidence threshold, the
review queue ordered by uncertainty, reviewed corrections, and the training view an order reads.

A dataset holding unlabeled rows carries, per row:

- `mf_id`: a stable row id (kept by every version derived from it, and sent to Label Studio as `data.mf_id`);
- `label`: the label a model trains on, or null (not labeled yet: the row waits for a teacher or a reviewer);
- `label_source`: `human` (came with the data), `teacher` (a pseudo-label above the threshold), `import` (a
  reviewed label brought back), or null;
- `pred_label`, `label_confidence`, `label_margin`, `label_model`: the last teacher's prediction for the row,
  its probability, the gap to the runner-up, and which model (`name@version`) made it.

Human and imported labels always win: a teacher never overwrites them. A dataset without these columns (every
row labeled by its file) is all `human`. Nothing here knows about models: predictions come in as arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import MFError

SOURCES = ("human", "teacher", "import")
REVIEWED = ("human", "import")  # labels people gave: never overwritten by a teacher
PROVENANCE = ("mf_id", "label_source", "label_model", "label_confidence", "label_margin", "pred_label")
STRATEGIES = ("least-confidence", "margin")


@dataclass
class Correction:
    """A reviewed label for one row, and where it was read (for row-level errors)."""

    mf_id: int
    label: str
    where: str  # "file:line" or "file: task #n"


def with_provenance(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with provenance columns: a plain labeled dataset is all `human`, ids in row order."""
    df = df.reset_index(drop=True).copy()
    if "label" not in df:
        df["label"] = None
    if "mf_id" not in df:
        df["mf_id"] = np.arange(len(df), dtype=np.int64)
    if "label_source" not in df:
        df["label_source"] = np.where(df["label"].notna(), "human", None)
    for col in ("label_model", "pred_label"):
        if col not in df:
            df[col] = None
    for col in ("label_confidence", "label_margin"):
        if col not in df:
            df[col] = np.nan
    df["label_confidence"] = df["label_confidence"].astype(float)
    df["label_margin"] = df["label_margin"].astype(float)
    return df


def combine(labeled: list[dict], unlabeled: list[dict]) -> list[dict]:
    """Seed rows (human) then unlabeled rows (no label), with ids in that order: the first version of a dataset
    that is mostly unlabeled."""
    rows = []
    for i, row in enumerate(labeled):
        rows.append({**row, "mf_id": i, "label_source": "human", "label_model": None, "label_confidence": None,
                     "label_margin": None, "pred_label": None})
    for j, row in enumerate(unlabeled, start=len(labeled)):
        rows.append({**row, "label": None, "mf_id": j, "label_source": None, "label_model": None,
                     "label_confidence": None, "label_margin": None, "pred_label": None})
    return rows


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts with nulls as None (so the content hash and parquet types are stable)."""
    out = df.to_dict("records")
    for row in out:
        for key, value in row.items():
            if value is None or isinstance(value, bytes | str):
                continue
            if isinstance(value, float | np.floating) and value != value:
                row[key] = None
            elif isinstance(value, np.integer):
                row[key] = int(value)
            elif isinstance(value, np.floating):
                row[key] = float(value)
    return out


def label_set(df: pd.DataFrame) -> list[str]:
    """The labels reviewers may use: those of the rows people labeled (the seed), else any label seen."""
    df = with_provenance(df)
    reviewed = df.loc[df["label_source"].isin(REVIEWED) & df["label"].notna(), "label"]
    seen = reviewed if len(reviewed) else df["label"].dropna()
    return sorted({str(x) for x in seen})


def seed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows people labeled (what a teacher may be trained and calibrated on)."""
    df = with_provenance(df)
    return df[df["label_source"].isin(REVIEWED) & df["label"].notna()].reset_index(drop=True)


def to_predict(df: pd.DataFrame) -> pd.DataFrame:
    """Rows a teacher should label: every row without a human or imported label (earlier pseudo-labels are
    predicted again by the new teacher)."""
    df = with_provenance(df)
    return df[~df["label_source"].isin(REVIEWED)]


# --- teacher predictions -------------------------------------------------------------------------------------
def confidence_and_margin(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the arg-max class, its probability, and its lead over the runner-up."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"probabilities must be [rows, classes], got shape {probs.shape}")
    top = probs.argmax(1)
    ordered = np.sort(probs, axis=1)
    conf = ordered[:, -1]
    margin = conf - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)
    return top, conf, margin


def apply_predictions(df: pd.DataFrame, probs: np.ndarray, classes: Sequence[str], model: str,
                      threshold: float) -> pd.DataFrame:
    """A new version's rows: every row without a reviewed label gets the teacher's prediction (label, confidence,
    margin, model); those at or above `threshold` become pseudo-labels (`teacher`), the rest are unlabeled and
    wait in the review queue. `probs` is in the order of `to_predict(df)`; `classes` names its columns."""
    if not 0 <= threshold <= 1:
        raise MFError(f"confidence threshold {threshold} is not between 0 and 1")
    df = with_provenance(df)
    mask = ~df["label_source"].isin(REVIEWED)
    if len(probs) != int(mask.sum()):
        raise ValueError(f"{len(probs)} predictions for {int(mask.sum())} rows to label")
    top, conf, margin = confidence_and_margin(probs) if len(probs) else (np.zeros(0, int), np.zeros(0), np.zeros(0))
    pred = np.asarray([classes[i] for i in top], dtype=object)
    accept = conf >= threshold
    idx = df.index[mask]
    df.loc[idx, "pred_label"] = pred
    df.loc[idx, "label_confidence"] = conf
    df.loc[idx, "label_margin"] = margin
    df.loc[idx, "label_model"] = model
    df.loc[idx, "label"] = np.where(accept, pred, None)
    df.loc[idx, "label_source"] = np.where(accept, "teacher", None)
    return df


def choose_threshold(confidence: Sequence[float], correct: Sequence[bool], target: float, *,
                     min_rows: int = 20) -> float:
    """The lowest confidence threshold at which the held-out labeled rows above it are at least `target` accurate
    (so the most rows get pseudo-labels at that accuracy), counting only thresholds with `min_rows` rows above
    them. Ties stay together: a threshold keeps every row of its confidence. Returns 1.0 (nothing passes but
    certainty) when no threshold reaches the target."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if len(conf) != len(ok):
        raise ValueError("confidence and correct differ in length")
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    best = 1.0
    hits = np.cumsum(ok)
    for i in range(len(conf)):
        if i + 1 < len(conf) and conf[i + 1] == conf[i]:
            continue  # the threshold conf[i] keeps every tied row
        n = i + 1
        if n >= min_rows and hits[i] / n >= target:
            best = float(conf[i])
    return best


# --- the review queue ----------------------------------------------------------------------------------------
def uncertainty(df: pd.DataFrame, strategy: str = "least-confidence") -> pd.Series:
    """How unsure the teacher was per row (higher = more worth a person's look): 1 - p(top) for least-confidence,
    1 - (p(top) - p(second)) for margin."""
    if strategy == "least-confidence":
        return 1.0 - df["label_confidence"].astype(float)
    if strategy == "margin":
        return 1.0 - df["label_margin"].astype(float)
    raise MFError(f"unknown queue strategy '{strategy}'; use one of: {', '.join(STRATEGIES)}")


def review_queue(df: pd.DataFrame, strategy: str = "least-confidence") -> pd.DataFrame:
    """Rows still without a label, most uncertain first (rows no teacher has seen yet go last); ties by id."""
    df = with_provenance(df)
    queue = df[df["label"].isna()].copy()
    queue["uncertainty"] = uncertainty(queue, strategy).fillna(-1.0)
    return queue.sort_values(["uncertainty", "mf_id"], ascending=[False, True], kind="stable")


# --- reviewed labels -----------------------------------------------------------------------------------------
def apply_corrections(df: pd.DataFrame, corrections: Sequence[Correction]) -> tuple[pd.DataFrame, list[str]]:
    """A new version's rows with reviewed labels applied (`import`), or the row-level errors that stop it: an
    unknown row id, or a label outside the dataset's label set. Nothing is applied when anything is wrong."""
    df = with_provenance(df)
    known = set(label_set(df))
    ids = {int(i): pos for pos, i in enumerate(df["mf_id"])}
    errors = []
    for c in corrections:
        if c.mf_id not in ids:
            errors.append(f"{c.where}: unknown row id {c.mf_id} (no such mf_id in this dataset)")
        elif c.label not in known:
            errors.append(f"{c.where}: label '{c.label}' is not one of the dataset's labels "
                          f"({', '.join(sorted(known))})")
    if errors:
        return df, errors
    for c in corrections:
        pos = df.index[ids[c.mf_id]]
        df.loc[pos, "label"] = c.label
        df.loc[pos, "label_source"] = "import"
    return df, []


# --- what an order trains on ---------------------------------------------------------------------------------
def training_view(df: pd.DataFrame, *, use_pseudo_labels: bool = False,
                  min_confidence: float | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The labeled rows an order trains on, without provenance columns, and how many came from each source.

    Reviewed rows (human, import) always; with `use_pseudo_labels`, also the teacher's: its pseudo-labels, or,
    with `min_confidence`, every teacher prediction at or above it on a row without a reviewed label."""
    df = with_provenance(df)
    reviewed = df["label_source"].isin(REVIEWED) & df["label"].notna()
    keep = reviewed.copy()
    label = df["label"].copy()
    source = df["label_source"].copy()
    if use_pseudo_labels:
        if min_confidence is None:
            teacher = (df["label_source"] == "teacher") & df["label"].notna()
        else:
            teacher = ~reviewed & df["pred_label"].notna() & (df["label_confidence"] >= min_confidence)
            label = label.where(~teacher, df["pred_label"])
            source = source.where(~teacher, "teacher")
        keep |= teacher
    out = df[keep].assign(label=label[keep])
    counts = Counter(source[keep])
    roles = [c for c in out.columns if c not in PROVENANCE]
    return out[roles].reset_index(drop=True), {k: counts[k] for k in SOURCES if counts.get(k)}
