"""Issue 17, item 8: order specs cannot exhaust the process that reads them. Each test attacks one guarantee:
YAML aliases (billion laughs) refused before expansion, deep nesting refused, error messages quote only an excerpt
of what they reject, every numeric field bounded (search-space choices included) - through `mf order run`,
`load_spec` and `POST /api/v1/orders`."""

from __future__ import annotations

import resource
import sys

import httpx
import pytest
import yaml

from modelfactory import safeyaml
from modelfactory.errors import MFError
from modelfactory.factory.spec import excerpt, load_spec, parse_spec

from .conftest import run_mf

ADMIN = "mfk_test-admin-key"


def billion_laughs(levels: int = 9) -> str:
    """~600 bytes: `search.space` nesting aliases `levels` deep (10**levels leaves once expanded)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    body = "\n".join("  " + ln for ln in lines)
    return (f"name: bomb\ntask: text-classification\ndata: {{path: x.csv}}\nteacher: {{model: t}}\n"
            f"search:\n  space:\n    layers: *a{levels - 1}\n  x:\n{body}\n")


def test_billion_laughs_is_refused_before_expansion(tmp_path):
    doc = billion_laughs()
    assert len(doc) < 1200
    f = tmp_path / "bomb.yaml"
    f.write_text(doc)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MFError, match="anchors and aliases") as e:
        load_spec(f)
    assert len(str(e.value)) < 300
    # expanded, 10**9 list entries would take tens of GB: the refusal cannot have built them
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000


def test_a_single_alias_or_merge_key_is_refused_too():
    with pytest.raises(safeyaml.RefusedYAML, match="anchors and aliases"):
        safeyaml.load("a: &x 1\nb: *x\n")
    with pytest.raises(safeyaml.RefusedYAML, match="line 2"):
        safeyaml.load("base: {x: 1}\nteacher: &t {model: m}\n")
    with pytest.raises(safeyaml.RefusedYAML):
        safeyaml.load("a: &x {k: 1}\nb:\n  <<: *x\n")
    assert safeyaml.load("a: [1, 2]\nb: {c: 'd'}\n") == {"a": [1, 2], "b": {"c": "d"}}


@pytest.mark.parametrize("doc", ["a: " + "1" * 5000, "a: !!timestamp 2020-99-99", "a: !!python/object:os.system x",
                                 "a: !!binary ZZZ"])
def test_scalars_a_constructor_refuses_are_yaml_errors(doc, tmp_path):
    with pytest.raises(yaml.YAMLError):
        safeyaml.load(doc)
    f = tmp_path / "order.yaml"
    f.write_text(doc + "\n")
    with pytest.raises(MFError, match="not valid YAML"):
        load_spec(f)


def test_deep_nesting_and_huge_documents_are_refused():
    with pytest.raises(safeyaml.RefusedYAML, match="nested deeper"):
        safeyaml.load("[" * 5000 + "]" * 5000)
    with pytest.raises(safeyaml.RefusedYAML, match="larger than"):
        safeyaml.load("a: " + "x" * (safeyaml.MAX_BYTES + 1))


def test_cli_order_run_refuses_the_bomb_with_one_short_line(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(billion_laughs())
    r = run_mf("order", "run", str(f), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "anchors and aliases" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stdout) + len(r.stderr) < 1000


def test_cli_order_run_on_a_binary_file_is_a_clear_error(tmp_path):
    f = tmp_path / "order.yaml"
    f.write_bytes(b"\xff\xfe\x00name: x\n\x80\x81")
    r = run_mf("order", "run", str(f), timeout=120)
    assert r.returncode == 2 and "not a text file" in r.stderr and "Traceback" not in r.stderr


def test_validation_errors_quote_a_short_excerpt(tmp_path):
    long = "x" * 100_000
    with pytest.raises(MFError) as e:
        parse_spec({"name": long, "task": "text-classification", "data": {"path": "a.csv"},
                    "teacher": {"model": "m", "epochs": [long] * 50}})
    assert len(str(e.value)) < 1000, len(str(e.value))
    assert "characters)" in str(e.value)
    nested = [[["z" * 1000] * 1000] * 1000] * 1000  # 10**9 leaves by reference: an excerpt must not walk them
    assert len(excerpt(nested)) <= 90
    with pytest.raises(MFError) as e:
        parse_spec({"name": "ok", "task": long, "data": {"path": "a.csv"}, "teacher": {"model": "m"}})
    assert len(str(e.value)) < 1000
    assert excerpt("short") == "'short'"


BASE = {"name": "n", "task": "text-classification", "data": {"path": "a.csv"}, "teacher": {"model": "m"}}


@pytest.mark.parametrize("section,field,value", [
    ("teacher", "epochs", 1e9), ("teacher", "batch_size", 10**9), ("teacher", "lr", 1e6),
    ("teacher", "max_length", 10**7), ("teacher", "checkpoint_every", 10**12),
    ("student", "epochs", 1e9), ("student", "batch_size", 10**9), ("student", "layers", 10**6),
    ("student", "hidden", 10**7), ("student", "heads", 10**5), ("student", "ffn", 10**8),
    ("student", "temperature", 1e12), ("search", "max_trials", 10**6), ("search", "max_minutes", 1e9),
    ("search", "seed", 2**70), ("split", "seed", -1), ("split", "max_rows", 10**12),
    ("targets", "max_size_mb", 1e300),
])
def test_every_numeric_field_is_bounded(section, field, value):
    spec = {**BASE, section: {**BASE.get(section, {}), field: value}}
    with pytest.raises(MFError, match=f"{section}.{field}"):
        parse_spec(spec)


@pytest.mark.parametrize("step", [{"quantize": {"calibration_rows": 10**9}},
                                  {"recover": {"epochs": 1e9}}, {"recover": {"batch_size": 10**9}}])
def test_recipe_steps_are_bounded(step):
    with pytest.raises(MFError, match="recipe"):
        parse_spec({**BASE, "recipe": [{"distill": {}}, step]})


@pytest.mark.parametrize("space,what", [({"layers": [1, 10**6]}, "layers"), ({"hidden": [10**9]}, "hidden"),
                                        ({"epochs": [1e9]}, "epochs"), ({"prune_ratio": [5]}, "prune_ratio"),
                                        ({"quantize": ["fp4"]}, "quantize"),
                                        ({"layers": list(range(1, 40))}, "at most")])
def test_search_space_choices_obey_the_same_bounds(space, what):
    with pytest.raises(MFError, match=what):
        parse_spec({**BASE, "search": {"space": space}})
    # the defaults still validate
    assert parse_spec({**BASE, "search": {}}).search is not None


# --- through the control plane ---------------------------------------------------------------------------------
@pytest.fixture
def api(mf_home, monkeypatch):
    from modelfactory.api import create_app

    from .test_serve_support import LiveServer

    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN)
    server = LiveServer(app=create_app())
    yield server
    server.stop()


def test_api_refuses_the_bomb_and_deep_json_with_4xx(api):
    with httpx.Client(base_url=api.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        r = c.post("/orders", content=billion_laughs(), headers={"content-type": "application/yaml"})
        assert r.status_code == 400 and "anchors and aliases" in r.json()["error"], r.text
        r = c.post("/orders", content="[" * 100_000 + "]" * 100_000, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        r = c.post("/orders", content="a:\n" + "  - " * 3000 + "1\n", headers={"content-type": "application/yaml"})
        assert 400 <= r.status_code < 500, r.text
        long = "y" * 200_000
        r = c.post("/orders", json={**BASE, "name": long, "teacher": {"model": "m", "epochs": 1e9}})
        assert r.status_code == 422 and len(r.text) < 2000, r.text[:300]
        assert c.get("/me").status_code == 200  # still serving


if __name__ == "__main__":  # print the bomb, for trying by hand
    sys.stdout.write(billion_laughs())
