"""Teacher auto-labeling: a dataset's unlabeled rows labeled by a fine-tuned teacher, as a new dataset version.

The teacher is a registered model (`name[@version|alias]`: its ONNX graph), or a pretrained base / a family's
architecture (a local model dir, a hub id, `scratch:resnet-s`) that is fine-tuned on the dataset's reviewed
(seed) rows through the factory's own stages: split -> finetune_teacher -> export_onnx, cached and checkpointed
like an order's. Predictions go through the task family's ONNX predictor, so any family works unchanged.

The confidence threshold is given, or chosen on labeled rows the teacher was not trained on (the split's val and
test rows of the seed) as the lowest one at which those rows are `target_accuracy` accurate; the unlabeled rows'
own labels are never looked at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import registry, tasks
from ..data import labels, versions
from ..data.versions import DatasetRef
from ..errors import MFError, NotFound
from .planner import labeling_plan
from .runner import Reporter, run_plan
from .spec import parse_spec
from .stages import read_split

_REGISTRY_REF = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}(@[A-Za-z0-9._-]+)?$")


@dataclass
class AutoLabelResult:
    dataset: DatasetRef  # the new version
    parent: DatasetRef
    teacher: str  # what made the labels: name@version (registry) or base@<artifact id prefix> (trained here)
    threshold: float
    threshold_from: str  # "given" or what it was chosen on
    predicted: int
    pseudo_labeled: int
    queued: int
    calibration: dict[str, Any] = field(default_factory=dict)
    queue: pd.DataFrame | None = None  # the review queue, most uncertain first
    details: dict[str, Any] = field(default_factory=dict)  # what the version's lineage records

    def queue_head(self, n: int) -> list[dict[str, Any]]:
        """The queue's first `n` rows for people and scripts: id, prediction, confidence, margin, uncertainty,
        and the text of a text dataset."""
        if self.queue is None:
            return []
        head = self.queue.head(n)
        return [{"mf_id": int(q["mf_id"]), "pred_label": q["pred_label"], "confidence": q["label_confidence"],
                 "margin": q["label_margin"], "uncertainty": q["uncertainty"],
                 **({"text": q["text"]} if "text" in head.columns else {})} for q in head.to_dict("records")]

    def as_dict(self, show: int) -> dict[str, Any]:
        """`mf label auto --json`: the new version, where its labels came from, and the queue's first rows."""
        return {"dataset": str(self.dataset), "parent": str(self.parent), "teacher": self.teacher,
                "threshold": self.threshold, "threshold_from": self.threshold_from, "predicted": self.predicted,
                "pseudo_labeled": self.pseudo_labeled, "queued": self.queued, "calibration": self.calibration,
                "rounds": self.details.get("rounds"), "queue_head": self.queue_head(show)}


def infer_task(df: pd.DataFrame) -> str:
    """The one discriminative family whose input role the rows have (text -> text, image -> image)."""
    fits = [n for n in tasks.names() if tasks.get(n).pipeline == "compress"
            and set(tasks.get(n).roles) <= set(df.columns)]
    if len(fits) != 1:
        raise MFError(f"cannot tell this dataset's task from its columns ({', '.join(df.columns)}): give --task "
                      f"({', '.join(tasks.names())})")
    return fits[0]


def _registered(teacher: str) -> registry.ModelRef | None:
    if not _REGISTRY_REF.match(teacher):
        return None
    try:
        return registry.resolve(teacher)
    except NotFound:
        return None


def train_teacher(rows_artifact: str, tenant: str, teacher: str, task: str, *, teacher_params: dict | None = None,
                  holdout: float = 0.3, seed_value: int = 0,
                  reporter: Reporter | None = None) -> tuple[str, str, pd.DataFrame]:
    """Fine-tune `teacher` on a dataset artifact of labeled rows through the factory's stages; (ONNX dir,
    label_model, the split's val+test rows: held out from training)."""
    part = round(holdout / 2, 4)
    spec = parse_spec({"name": "autolabel", "tenant": tenant, "task": task, "data": {"dataset": "seed"},
                       "teacher": {"model": teacher, **(teacher_params or {})},
                       "split": {"val": part, "test": part, "seed": seed_value}}, "auto-label teacher")
    results = run_plan(labeling_plan(spec, rows_artifact), reporter=reporter)
    split = results["split"].artifact
    held_out = pd.concat([read_split(split, "val"), read_split(split, "test")], ignore_index=True)
    label_model = f"{teacher}@{results['teacher'].artifact.id[:12]}"
    return str(results["export_teacher"].artifact.path), label_model, held_out


def _calibrate(predictor, family, calib: pd.DataFrame, target: float, min_rows: int) -> tuple[float, dict]:
    """The threshold at which `calib`'s rows (labeled, unseen by the teacher) reach `target` accuracy."""
    top, conf, _ = labels.confidence_and_margin(predictor.predict_proba(family.raw_inputs(calib)))
    correct = np.asarray([predictor.labels[i] for i in top]) == calib["label"].astype(str).to_numpy()
    threshold = labels.choose_threshold(conf, correct, target, min_rows=min(min_rows, len(calib)))
    above = conf >= threshold
    return threshold, {"rows": int(len(calib)), "accuracy": float(correct.mean()), "rows_above": int(above.sum()),
                       "accuracy_above": float(correct[above].mean()) if above.any() else None,
                       "target_accuracy": target}


def auto_label(dataset: str, teacher: str, *, task: str | None = None, threshold: float | None = None,
               target_accuracy: float = 0.97, strategy: str = "least-confidence",
               teacher_params: dict | None = None, holdout: float = 0.3, min_calibration_rows: int = 20,
               rounds: int = 1, round_params: dict | None = None, reporter: Reporter | None = None,
               on_round: Callable[[int, pd.DataFrame], None] | None = None) -> AutoLabelResult:
    """Label `dataset`'s rows without a reviewed label with `teacher` and register the result as a new version.

    `rounds` > 1 (a teacher trained here only) is self-training: each further round fine-tunes the teacher again
    on the seed rows plus the previous round's pseudo-labels, and labels every unreviewed row anew. The seed rows
    held out to choose the threshold in round 1 stay out of every round's training. `round_params` override
    `teacher_params` from round 2 on (the training set is then many times the seed: fewer epochs do).
    `on_round(round, rows)` sees every round's labeled rows (e.g. to measure what each round adds)."""
    if strategy not in labels.STRATEGIES:
        raise MFError(f"unknown queue strategy '{strategy}'; use one of: {', '.join(labels.STRATEGIES)}")
    if rounds < 1:
        raise MFError(f"rounds must be at least 1, got {rounds}")
    parent = versions.resolve(dataset)
    df = labels.with_provenance(versions.load_rows(parent.artifact_id))
    seed = labels.seed_rows(df)
    pending = labels.to_predict(df)
    if pending.empty:
        raise MFError(f"dataset {parent} has no rows without a reviewed label: nothing to auto-label")
    if seed.empty:
        raise MFError(f"dataset {parent} has no labeled seed rows to train or check a teacher on")
    ref = _registered(teacher)
    family_name = ref.task if ref is not None else (task or infer_task(df))
    if tasks.get(family_name).pipeline != "compress":
        raise MFError(f"task '{family_name}' has no classifier to label rows with")
    if ref is not None:
        if rounds > 1:
            raise MFError("--rounds > 1 retrains the teacher: give a base to fine-tune, not a registered model")
        family = tasks.get(ref.task)
        model_dir, label_model, calib = str(ref.path), str(ref), seed
        calib_from = f"{len(seed)} seed rows (the registered teacher may have seen them)"
        predictor = family.load_predictor(model_dir)
    else:
        name = family_name
        family = tasks.get(name)
        seed_view = versions.training_view(parent)  # reviewed rows only, as an order without pseudo-labels sees them
        model_dir, label_model, calib = train_teacher(seed_view.artifact_id, parent.tenant, teacher, name,
                                                      teacher_params=teacher_params, holdout=holdout,
                                                      reporter=reporter)
        calib_from = f"{len(calib)} held-out seed rows"
        predictor = family.load_predictor(model_dir)
    missing = sorted(set(labels.label_set(df)) - set(predictor.labels))
    if missing:
        raise MFError(f"teacher {label_model} does not know the dataset's label(s) {', '.join(missing)}")
    history, new_rows = [], df
    for round_no in range(1, rounds + 1):
        if round_no > 1:  # self-training: seed + last round's pseudo-labels, the calibration rows kept out
            role = family.roles[0]
            view, _ = labels.training_view(new_rows, use_pseudo_labels=True)
            view = view[~view[role].isin(set(calib[role]))]
            artifact = versions.store_rows(labels.records(view), producer="label_round", params={
                "dataset": str(parent), "round": round_no, "teacher": label_model})
            # A small split holdout: the threshold is chosen on `calib`, these rows only report val accuracy.
            model_dir, label_model, _ = train_teacher(artifact, parent.tenant, teacher, family.name,
                                                      teacher_params={**(teacher_params or {}),
                                                                      **(round_params or {})},
                                                      holdout=0.1, reporter=reporter)
            predictor = family.load_predictor(model_dir)
        probs = predictor.predict_proba(family.raw_inputs(pending))
        calibration: dict[str, Any] = {}
        if threshold is None or round_no < rounds:
            round_threshold, calibration = _calibrate(predictor, family, calib, target_accuracy,
                                                      min_calibration_rows)
            threshold_from = f"chosen on {calib_from} for {target_accuracy:.0%} accuracy"
        if round_no == rounds and threshold is not None:
            round_threshold, threshold_from = threshold, "given"
        new_rows = labels.apply_predictions(df, probs, predictor.labels, label_model, round_threshold)
        pseudo = int((new_rows.loc[pending.index, "label_source"] == "teacher").sum())
        history.append({"round": round_no, "teacher": label_model, "threshold": round_threshold,
                        "pseudo_labeled": pseudo, **({"calibration": calibration} if calibration else {})})
        if on_round is not None:
            on_round(round_no, new_rows)
    threshold = round_threshold
    predicted = len(pending)
    details = {"teacher": label_model, "threshold": threshold, "threshold_from": threshold_from,
               "calibration": calibration, "predicted": predicted, "pseudo_labeled": pseudo,
               "queued": predicted - pseudo, "strategy": strategy, **({"rounds": history} if rounds > 1 else {})}
    new = versions.derive(parent, new_rows, "auto_label", details)
    return AutoLabelResult(new, parent, label_model, threshold, threshold_from, predicted, pseudo,
                           predicted - pseudo, calibration, labels.review_queue(new_rows, strategy), details)
