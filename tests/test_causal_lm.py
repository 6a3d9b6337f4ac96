"""The causal-lm family: chat / prompt-completion data validated row by row, loss only on what the model should
say, the context length enforced or truncated, and a real LoRA order on a tiny Llama base (built here: a BPE
tokenizer trained on the corpus, random weights) that lowers held-out loss and registers only the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from modelfactory import registry, tasks
from modelfactory.data import versions
from modelfactory.data.ingest import BadRows
from modelfactory.errors import MFError
from modelfactory.factory.order import run_order
from modelfactory.factory.spec import parse_spec
from modelfactory.tasks.causal_lm import IGNORE
from modelfactory.tasks.lm_base import build_base

from .conftest import run_mf


@pytest.fixture(scope="session")
def lm_base(corpus_df, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    build_base(corpus_df["text"].head(2000).tolist(), out, size="tiny", vocab_size=800)
    return out


def chat_rows(df: pd.DataFrame, n: int) -> list[dict]:
    """A real task in chat form: the corpus's reviews, and the review's label as the assistant's answer."""
    return [{"messages": [{"role": "system", "content": "Label the movie review."},
                          {"role": "user", "content": r.text[:200]},
                          {"role": "assistant", "content": f"This review is {r.label}."}]}
            for r in df.sample(n, random_state=0).itertuples()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_chat_and_completion_rows_are_validated_with_file_and_line(tmp_path, corpus_df):
    good = chat_rows(corpus_df, 3)
    bad = [
        good[0],
        {"messages": "hello"},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        "{broken json",
        good[1],
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", bad)
    roles = versions.roles_for(path)
    assert roles == {"messages": "messages"}
    with pytest.raises(BadRows) as e:
        versions.add_file("chat", path, roles, checks=tasks.get("causal-lm").row_checks())
    where = {(r.line, r.reason.split(":")[0]) for r in e.value.errors}
    assert {line for line, _ in where} == {2, 3, 4, 5, 6}
    assert any("not one of system, user, assistant" in r.reason for r in e.value.errors)
    assert any("no assistant turn" in r.reason for r in e.value.errors)
    ref = versions.add_file("chat", path, roles, checks=tasks.get("causal-lm").row_checks(), skip_bad_rows=True)
    assert ref.n_rows == 2 and ref.stats["messages_median"] == 3

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q: 2+2?\nA:", "completion": " 4"},
                                                   {"prompt": "Q: 3+3?\nA:", "completion": ""}])
    assert versions.roles_for(pairs) == {"prompt": "prompt", "completion": "completion"}
    with pytest.raises(BadRows) as e:
        versions.add_file("pairs", pairs, versions.roles_for(pairs), checks=tasks.get("causal-lm").row_checks())
    assert [(r.line, r.reason) for r in e.value.errors] == [(2, "empty completion")]


def test_only_assistant_and_completion_tokens_are_learned(lm_base):
    family = tasks.get("causal-lm")
    from modelfactory.tasks.lm_common import chat_tokenizer

    tok = chat_tokenizer(str(lm_base))
    messages = [{"role": "user", "content": "Is this good?"}, {"role": "assistant", "content": "Yes, fresh."},
                {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Quite sure."}]
    enc = family.encode(tok, pd.DataFrame([{"messages": json.dumps(messages)}]), 512, False)
    ids, labels = enc.input_ids[0], enc.labels[0]
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "Yes, fresh." in learned and "Quite sure." in learned
    assert "Is this good?" not in learned and "Sure?" not in learned
    enc = family.encode(tok, pd.DataFrame([{"prompt": "Q: capital of France?\nA:", "completion": " Paris"}]), 512,
                        False)
    learned = tok.decode([t for t, lab in zip(enc.input_ids[0], enc.labels[0]) if lab != IGNORE])
    assert learned.startswith(" Paris") and "France" not in learned


def test_rows_over_the_context_are_named_or_truncated(lm_base):
    family = tasks.get("causal-lm")
    from modelfactory.tasks.lm_common import chat_tokenizer

    tok = chat_tokenizer(str(lm_base))
    long = {"prompt": "word " * 300, "completion": " end"}
    df = pd.DataFrame([{"prompt": "short", "completion": " ok"}, long])
    with pytest.raises(MFError, match=r"1 row\(s\) longer than the context of 64 tokens: row 2 \(\d+ tokens\)"):
        family.encode(tok, df, 64, False)
    # truncated: the long row loses its completion entirely, so only the short one is left to learn from
    assert len(family.encode(tok, df, 64, True).input_ids) == 1


@pytest.mark.slow
def test_a_lora_order_lowers_held_out_loss_and_registers_only_the_adapter(lm_base, corpus_df, tmp_path):
    data = write_jsonl(tmp_path / "reviews-chat.jsonl", chat_rows(corpus_df, 240))
    spec = parse_spec({
        "name": "review-chat", "task": "causal-lm", "data": {"path": str(data)},
        "teacher": {"model": str(lm_base), "epochs": 3, "lr": 3e-3, "batch_size": 8, "max_length": 192,
                    "checkpoint_every": 20, "lora": {"r": 8, "alpha": 16}},
        "split": {"val": 0.15, "test": 0.15},
    })
    result = run_order(spec)
    base, adapter = result.metrics["base"], result.metrics["adapter"]
    assert adapter["perplexity"] < 0.5 * base["perplexity"], (base, adapter)  # learned the task's answers
    assert adapter["eval_tokens"] == base["eval_tokens"] > 0  # the same held-out tokens, judged both ways
    ref = registry.resolve("review-chat")
    assert ref.task == "causal-lm" and "prod" in ref.aliases
    files = {p.name for p in ref.path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "mf_model.json"} <= files
    assert not any(name.startswith("model") and name.endswith(".safetensors") for name in files)  # no base copy
    adapter_bytes = (ref.path / "adapter_model.safetensors").stat().st_size
    base_bytes = sum(p.stat().st_size for p in lm_base.glob("*.safetensors"))
    assert adapter_bytes < base_bytes / 5
    meta = json.loads((ref.path / "mf_model.json").read_text())
    assert meta["base_model"] == str(lm_base) and meta["kind"] == "lora-adapter"
    report = result.report_path.read_text()
    assert "perplexity" in report and "| base |" in report and "| adapter |" in report
    assert ref.lineage["pipeline"] == "adapt" and "LoRA adapter" in ref.card

    # the same order again: every stage is a cache hit
    again = run_order(spec)
    assert all(r.cached for r in again.results.values())


@pytest.mark.slow
def test_cli_order_with_prompt_completion_pairs_and_truncate(lm_base, tmp_path):
    rows = [{"prompt": f"Q: what is {a} plus {b}?\nA:", "completion": f" {a + b}"}
            for a in range(12) for b in range(6)] + [{"prompt": "word " * 400, "completion": " long"}]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    order = tmp_path / "order.yaml"
    order.write_text(json.dumps({"name": "sums", "task": "causal-lm", "data": {"path": str(data)},
                                 "teacher": {"model": str(lm_base), "epochs": 1, "max_length": 64,
                                             "batch_size": 8, "lr": 3e-3}}))
    refused = run_mf("order", "run", str(order))
    assert refused.returncode == 2
    assert "longer than the context of 64 tokens" in refused.stderr and "--truncate" in refused.stderr
    done = run_mf("order", "run", str(order), "--truncate", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["model"] == "sums@1" and set(out["metrics"]) == {"base", "adapter"}


def test_adapter_training_stops_at_a_checkpoint_and_resumes_to_the_same_adapter(lm_base, corpus_df, tmp_path):
    from safetensors.torch import load_file

    from modelfactory.train.loop import StopRequested

    family = tasks.get("causal-lm")
    rows = pd.DataFrame(chat_rows(corpus_df, 48))
    rows["messages"] = rows["messages"].map(json.dumps)
    # no dropout: the resumed run must then land on the very same weights (dropout's random masks would differ)
    params = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}, "epochs": 1,
              "lr": 3e-3, "batch_size": 4, "max_length": 192, "truncate": True, "seed": 0, "_checkpoint_every": 3}

    def run(name: str, stop_after: int | None):
        steps = []
        out = tmp_path / name
        out.mkdir(exist_ok=True)
        metrics = family.adapt(str(lm_base), rows, rows.head(8), params, out, tmp_path / f"{name}-work",
                               should_stop=lambda: stop_after is not None and len(steps) >= stop_after,
                               progress=lambda s, t, info: steps.append(s))
        return metrics, load_file(str(out / "adapter_model.safetensors"))

    whole, expected = run("whole", None)
    with pytest.raises(StopRequested):
        run("resumed", 4)
    again, got = run("resumed", None)
    assert whole["resumed_from_step"] == 0 and again["resumed_from_step"] == 4  # checkpointed where it stopped
    assert again["steps"] == whole["steps"] == 12
    assert got.keys() == expected.keys()
    for k in expected:
        assert (got[k] - expected[k]).abs().max() < 1e-5, k
