"""Structured pruning on a tiny random BERT classifier: shapes, parameter counts, head integrity, save/reload.
Structural facts only (no timing): the model is too small, and the CPU too shared, for timings to mean anything."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from modelfactory.compress.prune import prune_model, reloadable

HIDDEN, HEADS, FFN, LAYERS, LABELS = 64, 4, 128, 2, 3
HEAD = HIDDEN // HEADS


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, num_labels=LABELS)
    return BertForSequenceClassification(cfg).eval()


def inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def logits(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


def test_halves_heads_and_ffn_keeps_hidden_size_and_runs():
    model = tiny_bert()
    with pytest.warns(UserWarning, match="from_pretrained would not reload"):
        stats = prune_model(model, inputs(2, 8), ratio=0.5)

    assert (stats["heads_before"], stats["heads_after"], stats["ffn_before"], stats["ffn_after"]) == (4, 2, 128, 64)
    assert (model.config.num_attention_heads, model.config.intermediate_size, model.config.hidden_size) == (2, 64, 64)
    for layer in model.bert.encoder.layer:
        attn = layer.attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, HEAD, 2 * HEAD)
        for lin in (attn.query, attn.key, attn.value):
            assert lin.weight.shape == (2 * HEAD, HIDDEN)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, 2 * HEAD)
        assert layer.intermediate.dense.weight.shape == (64, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, 64)
    assert model.bert.embeddings.word_embeddings.weight.shape == (100, HIDDEN)
    assert model.bert.pooler.dense.weight.shape == (HIDDEN, HIDDEN)
    assert model.classifier.weight.shape == (LABELS, HIDDEN)

    # per layer: half of q/k/v (weights + bias) and attention-output inputs, half of FFN up (+bias) and down inputs
    removed = LAYERS * (3 * (2 * HEAD * HIDDEN + 2 * HEAD) + HIDDEN * 2 * HEAD + (64 * HIDDEN + 64) + HIDDEN * 64)
    assert stats["parameters_before"] - stats["parameters_after"] == removed
    assert stats["parameters_after"] == sum(p.numel() for p in model.parameters())
    assert 0.25 < removed / stats["parameters_before"] < 0.35  # embeddings (untouched) are a third of this model

    out = logits(model, inputs(8, 32))
    assert out.shape == (8, LABELS) and torch.isfinite(out).all()
    assert stats["reloadable"] is False


def test_removes_whole_heads_consistently_across_qkv_and_output():
    original = tiny_bert()
    model = copy.deepcopy(original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prune_model(model, inputs(2, 8), ratio=0.5)

    def kept_heads(pruned: torch.Tensor, full: torch.Tensor) -> list[int]:
        """Which original heads (row blocks of `full`) the row blocks of `pruned` are exact copies of."""
        return [next(h for h in range(HEADS) if torch.equal(block, full[h * HEAD:(h + 1) * HEAD]))
                for block in pruned.split(HEAD)]

    for old, new in zip(original.bert.encoder.layer, model.bert.encoder.layer):
        a, b = old.attention, new.attention
        heads = kept_heads(b.self.query.weight, a.self.query.weight)
        assert len(set(heads)) == 2
        assert kept_heads(b.self.key.weight, a.self.key.weight) == heads
        assert kept_heads(b.self.value.weight, a.self.value.weight) == heads
        assert kept_heads(b.output.dense.weight.T, a.output.dense.weight.T) == heads


def test_ffn_pruned_model_round_trips_through_save_pretrained(tmp_path: Path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "full")
    stats = prune_model(model, inputs(2, 8), ratio=0.5, prune_heads=False)
    assert stats["reloadable"] and (stats["heads_after"], stats["ffn_after"]) == (HEADS, 64)

    model.save_pretrained(tmp_path / "pruned")
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    x = inputs(8, 32)
    torch.testing.assert_close(logits(loaded.eval(), x), logits(model, x), atol=1e-5, rtol=0)

    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("full", "pruned")}
    assert size["pruned"] < size["full"] - 4 * 16_000  # ~16.5k fp32 parameters fewer


def test_head_pruned_bert_really_cannot_be_reloaded(tmp_path: Path):
    """Why prune_model flags it: BERT rebuilds head size as hidden_size / num_attention_heads, so 2 heads of 16
    become 2 heads of 32 on reload. The flag must match what from_pretrained actually does."""
    model = tiny_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prune_model(model, inputs(2, 8), ratio=0.5)
    assert not reloadable(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="mismatch"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 0.9])
def test_rejects_ratios_that_leave_nothing_or_make_no_sense(ratio: float):
    model = tiny_bert()
    before = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        prune_model(model, inputs(2, 8), ratio=ratio)
    assert sum(p.numel() for p in model.parameters()) == before
