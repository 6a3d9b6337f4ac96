import os

import pytest

from modelfactory import artifacts
from modelfactory.artifacts import ArtifactStore, content_hash, dir_hash
from modelfactory.factory.cache import stage_key


def test_stage_key_depends_on_what_determines_the_output():
    base = stage_key("distill", 1, {"layers": 2, "_checkpoint_every": 5}, {"teacher": "t1"})
    assert base == stage_key("distill", 1, {"layers": 2, "_checkpoint_every": 50}, {"teacher": "t1"})
    assert base != stage_key("distill", 1, {"layers": 3}, {"teacher": "t1"})
    assert base != stage_key("distill", 2, {"layers": 2}, {"teacher": "t1"})
    assert base != stage_key("distill", 1, {"layers": 2}, {"teacher": "t2"})
    assert stage_key("s", 1, {"a": 1, "b": 2}, {}) == stage_key("s", 1, {"b": 2, "a": 1}, {})


def test_content_hash_is_canonical():
    assert content_hash({"a": [1, 2], "b": "x"}) == content_hash({"b": "x", "a": [1, 2]})
    assert content_hash({"a": [1, 2]}) != content_hash({"a": [2, 1]})


def test_dir_hash_rereads_a_file_only_when_its_stat_changed(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"a" * 64)
    (model / "config.json").write_text("{}")
    reads = []
    real = artifacts.file_hash
    monkeypatch.setattr(artifacts, "file_hash", lambda p: reads.append(p.name) or real(p))
    first = dir_hash(model)
    assert dir_hash(model) == first and sorted(reads) == ["config.json", "weights.bin"]  # the second: no reads
    st = os.stat(model / "weights.bin")
    (model / "weights.bin").write_bytes(b"b" * 64)  # same size, new content ...
    os.utime(model / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # ... even 1 ns later
    assert dir_hash(model) != first and reads.count("weights.bin") == 2 and reads.count("config.json") == 1
    (model / "weights.bin").write_bytes(b"a" * 64)
    os.utime(model / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 2))
    assert dir_hash(model) == first  # the content decides the hash; the stat only when to re-read


def test_failed_artifact_leaves_nothing(mf_home):
    store = ArtifactStore()
    with pytest.raises(RuntimeError):
        with store.create("abc", kind="x", producer="test") as (tmp, _):
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("killed mid-write")
    assert not store.exists("abc")
    assert list(store.root.iterdir()) == []


def test_finished_artifact_has_manifest(mf_home):
    store = ArtifactStore()
    with store.create("def", kind="x", producer="test", params={"p": 1}, inputs={"in": "abc"}) as (tmp, extra):
        (tmp / "w.bin").write_bytes(b"1")
        extra["metrics"] = {"acc": 0.5}
    art = store.get("def")
    assert art.kind == "x" and art.metrics == {"acc": 0.5} and art.manifest["inputs"] == {"in": "abc"}
    assert (art.path / "w.bin").read_bytes() == b"1"
