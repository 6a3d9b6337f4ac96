import pytest

from modelfactory.artifacts import ArtifactStore, content_hash
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
