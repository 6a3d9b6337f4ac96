import pandas as pd
import pytest

from modelfactory.data import versions
from modelfactory.data.split import stratified_split
from modelfactory.errors import MFError, NotFound

ROLES = {"text": "text", "label": "label"}


def test_same_bytes_same_version(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\nx,1\ny,2\n")
    a = versions.add_file("tickets", f, ROLES)
    b = versions.add_file("tickets", f, ROLES)
    assert (a.version, a.artifact_id) == (b.version, b.artifact_id) == (1, a.artifact_id)
    f.write_text("text,label\nx,1\ny,2\nz,2\n")
    c = versions.add_file("tickets", f, ROLES)
    assert c.version == 2 and c.artifact_id != a.artifact_id
    assert versions.resolve("tickets").version == 2
    assert versions.resolve("tickets@1").artifact_id == a.artifact_id
    with pytest.raises(NotFound):
        versions.resolve("tickets@9")


def test_concurrent_adds_of_one_name_get_distinct_versions():
    """Uploads of one dataset name at once (the control plane runs them in threads) each get their own version;
    none fails on the (name, version) unique constraint (it did under bench/load.py: a 500)."""
    from concurrent.futures import ThreadPoolExecutor

    from modelfactory.data.ingest import Table

    def add(i: int) -> int:
        return versions.add_table("busy", Table(rows=[{"text": f"row {i}", "label": "a"}], source="t")).version

    got = [add(0)]  # the database and its tables exist before the rush, as in a running server
    with ThreadPoolExecutor(8) as pool:
        got += pool.map(add, range(1, 24))
    assert sorted(got) == list(range(1, 25))


def test_bad_rows_stop_unless_skipped(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\nx,1\n,2\ny,2\n")
    with pytest.raises(MFError, match="a.csv:3: empty text"):
        versions.add_file("t", f, ROLES)
    ref = versions.add_file("t", f, ROLES, skip_bad_rows=True)
    assert ref.n_rows == 2 and ref.skipped == 1


def _df(n_per_label=40, labels=("a", "b", "c")):
    return pd.DataFrame([{"text": f"{lab} {i}", "label": lab} for lab in labels for i in range(n_per_label)])


def test_split_is_deterministic_and_stratified():
    df = _df()
    s1 = stratified_split(df, val=0.1, test=0.2, seed=7)
    s2 = stratified_split(df.sample(frac=1, random_state=1).sort_index(), val=0.1, test=0.2, seed=7)
    for part in ("train", "val", "test"):
        assert s1[part]["text"].tolist() == s2[part]["text"].tolist()
    assert sum(len(p) for p in s1.values()) == len(df)
    assert set(s1["train"]["text"]).isdisjoint(s1["test"]["text"])
    assert s1["test"]["label"].value_counts().tolist() == [8, 8, 8]
    s3 = stratified_split(df, val=0.1, test=0.2, seed=8)
    assert s3["test"]["text"].tolist() != s1["test"]["text"].tolist()


def test_split_max_rows_samples_first():
    parts = stratified_split(_df(100), val=0.1, test=0.1, seed=0, max_rows=60)
    assert sum(len(p) for p in parts.values()) == 60


def test_single_class_is_refused():
    with pytest.raises(MFError, match="only one class"):
        stratified_split(_df(labels=("a",)), val=0.1, test=0.1, seed=0)


def test_label_that_cannot_reach_training_is_refused():
    df = pd.concat([_df(), pd.DataFrame([{"text": "rare", "label": "zzz"}])])
    with pytest.raises(MFError, match=r"label 'zzz' \(1 row\) would never be seen in training"):
        stratified_split(df, val=0.1, test=0.1, seed=0)
