"""Offline prediction with a registered model (`mf predict`): raw inputs (texts, or image files for an image
model) through the model's own ONNX graph, preprocessing included, in this process."""

from __future__ import annotations

from dataclasses import dataclass

from .. import registry, tasks
from ..errors import MFError


@dataclass
class Predictions:
    model: str  # name@version
    labels: list[str]  # the model's classes, in its output order
    rows: list[tuple[str, str, dict[str, float]]]  # (input as given, predicted label, probability per label)


def predict(model: str, inputs: list[str]) -> Predictions:
    """Classify `inputs` (as given on a command line: texts, or image file paths) with `model` (NAME,
    NAME@VERSION or NAME@ALIAS)."""
    ref = registry.resolve(model)
    if not inputs:
        raise MFError("nothing to predict: give inputs as arguments or --file rows.jsonl")
    task = tasks.get(ref.task)
    parsed = [task.parse_input(a) for a in inputs]
    predictor = task.load_predictor(ref.path)
    try:
        preds = predictor.predict(parsed)
    except ValueError as e:
        raise MFError(f"cannot predict: {e}") from None
    return Predictions(str(ref), list(predictor.labels), [(x, lab, p) for x, (lab, p) in zip(inputs, preds)])
