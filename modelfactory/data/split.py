"""Deterministic stratified train/val/test split: the same rows and seed always give the same split."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from ..errors import MFError

MIN_ROWS_PER_LABEL = 3  # so that every label can appear in train, val and test


def check_labels(df: pd.DataFrame) -> None:
    counts = df["label"].value_counts()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        raise MFError(f"only one class ('{only}') in the data: a classifier needs at least 2")
    rare = counts[counts < MIN_ROWS_PER_LABEL]
    if len(rare):
        names = ", ".join(f"'{k}' ({v} row{'s' if v > 1 else ''})" for k, v in rare.items())
        raise MFError(f"label {names} would never be seen in training: every label needs at least "
                      f"{MIN_ROWS_PER_LABEL} rows")


def sample_rows(df: pd.DataFrame, max_rows: int | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A `max_rows` sample in the label proportions (quick runs on big data), and the rows it left out: never
    trained on with their labels nor evaluated on, but their inputs are still the user's own data."""
    df = df.reset_index(drop=True)
    if not max_rows or len(df) <= max_rows:
        return df, df.iloc[:0]
    if "label" not in df:
        kept = df.sample(n=max_rows, random_state=seed)
        return kept.reset_index(drop=True), df.drop(kept.index).reset_index(drop=True)
    check_labels(df)
    kept, left = train_test_split(df, train_size=max_rows, stratify=df["label"], random_state=seed)
    return kept.reset_index(drop=True), left.reset_index(drop=True)


def stratified_split(df: pd.DataFrame, *, val: float, test: float, seed: int,
                     max_rows: int | None = None) -> dict[str, pd.DataFrame]:
    """Split by label proportions (at random where rows have no label, e.g. chat data). `max_rows` takes a
    stratified sample first (`sample_rows`)."""
    df, _ = sample_rows(df, max_rows, seed)
    if "label" not in df:
        rest, test_df = train_test_split(df, test_size=test, random_state=seed)
        train_df, val_df = train_test_split(rest, test_size=val / (1 - test), random_state=seed)
        return {name: part.reset_index(drop=True) for name, part in
                (("train", train_df), ("val", val_df), ("test", test_df))}
    check_labels(df)
    rest, test_df = train_test_split(df, test_size=test, stratify=df["label"], random_state=seed)
    train_df, val_df = train_test_split(rest, test_size=val / (1 - test), stratify=rest["label"],
                                        random_state=seed)
    return {name: part.reset_index(drop=True) for name, part in
            (("train", train_df), ("val", val_df), ("test", test_df))}


def stratified_cut(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """`rows` of `df` in its label proportions (every label kept when possible): fewer labels, same distribution."""
    if "label" not in df or rows >= len(df):
        return df.sample(n=min(rows, len(df)), random_state=seed).reset_index(drop=True)
    cut, _ = train_test_split(df, train_size=rows, stratify=df["label"], random_state=seed)
    return cut.reset_index(drop=True)
