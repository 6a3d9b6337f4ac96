"""Classification metrics shared by every classifying task family."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "confusion": {"labels": labels,
                      "matrix": np.asarray(confusion_matrix(y_true, y_pred, labels=labels)).tolist()},
    }
