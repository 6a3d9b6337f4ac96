"""Distillation parts: losses behave as their papers define them, connectors adapt widths, vocabulary pruning
keeps tokenization identical while shrinking the embedding matrix, narrow students start from the teacher."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from modelfactory import tasks
from modelfactory.compress.distill import (
    DistillConfig,
    attention_loss,
    distill_loss,
    hidden_state_loss,
    make_connectors,
    soft_logit_kd,
    uniform_layer_map,
)
from modelfactory.tasks.base import Outputs


def test_soft_kd_is_zero_only_when_distributions_match():
    t = torch.tensor([[2.0, 0.5, -1.0]])
    assert soft_logit_kd(t.clone(), t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_logit_kd(torch.zeros_like(t), t, temperature=2.0).item() > 0.01


def test_uniform_layer_map():
    assert uniform_layer_map(2, 6) == [2, 5]
    assert uniform_layer_map(3, 6) == [1, 3, 5]
    assert uniform_layer_map(6, 6) == list(range(6))


def test_hidden_and_attention_losses_with_different_widths_and_heads():
    torch.manual_seed(0)
    b, seq = 2, 5
    mask = torch.ones(b, seq)
    teacher_h = tuple(torch.randn(b, seq, 16) for _ in range(4))  # embeddings + 3 layers
    student_h = tuple(torch.randn(b, seq, 8, requires_grad=True) for _ in range(2))  # embeddings + 1 layer
    conns = make_connectors([(8, 16)])
    loss = hidden_state_loss(student_h, teacher_h, [2], conns, mask)
    loss.backward()
    assert loss.item() > 0 and conns[0].weight.grad is not None

    t_att = tuple(torch.softmax(torch.randn(b, 4, seq, seq), -1) for _ in range(3))
    s_att = (torch.softmax(torch.randn(b, 2, seq, seq), -1),)
    assert attention_loss(s_att, t_att, [2], mask).item() > 0
    same = (t_att[2][:, :2] * 0 + t_att[2].mean(1, keepdim=True).expand(b, 2, seq, seq),)
    assert attention_loss(same, t_att, [2], mask).item() == pytest.approx(0.0, abs=1e-5)


def test_distill_loss_adds_intermediate_terms_only_when_weighted():
    torch.manual_seed(0)
    s = Outputs(torch.randn(2, 3), tuple(torch.randn(2, 4, 8) for _ in range(2)),
                (torch.softmax(torch.randn(2, 2, 4, 4), -1),))
    t = Outputs(torch.randn(2, 3), tuple(torch.randn(2, 4, 8) for _ in range(3)),
                tuple(torch.softmax(torch.randn(2, 2, 4, 4), -1) for _ in range(2)))
    y = torch.tensor([0, 2])
    conns = make_connectors([(8, 8)])
    base = distill_loss(DistillConfig(), s, t.logits, y, t=t, layer_map=[1], connectors=conns)
    more = distill_loss(DistillConfig(hidden_weight=1.0, attention_weight=1.0), s, t.logits, y, t=t, layer_map=[1],
                        connectors=conns)
    assert more.item() > base.item()
    assert not DistillConfig().needs_live_teacher and DistillConfig(hidden_weight=0.5).needs_live_teacher


TEXTS = ["a thoroughly enjoyable ride", "the plot meanders and the jokes fall flat", "a lovely, moving film",
         "an unwatchable mess", "a young woman travels to paris to find her father"]


def test_vocabulary_pruning_keeps_tokenization_and_shrinks_embeddings(tiny_teacher):
    task = tasks.get("text-classification")
    teacher = task.load_teacher(str(tiny_teacher), ["neg", "pos"], {"max_length": 32})
    student = task.build_student(teacher, {"layers": 1})
    before = [teacher.preprocessor.convert_ids_to_tokens(x) for x in teacher.preprocessor(TEXTS)["input_ids"]]
    small = task.specialize(student, pd.DataFrame({"text": TEXTS, "label": ["pos"] * 5}), {"vocab": "train"})
    after = [small.preprocessor.convert_ids_to_tokens(x) for x in small.preprocessor(TEXTS)["input_ids"]]
    assert after == before
    vocab = small.model.get_input_embeddings().weight.shape[0]
    assert vocab == small.preprocessor.vocab_size < teacher.preprocessor.vocab_size / 10
    # an unseen word still splits into kept pieces, not [UNK]
    assert "[UNK]" not in small.preprocessor.tokenize("zyzzyva")
    # the kept rows are the teacher's rows for the same pieces
    t_emb, s_emb = teacher.model.get_input_embeddings().weight, small.model.get_input_embeddings().weight
    piece = "film"
    torch.testing.assert_close(s_emb[small.preprocessor.convert_tokens_to_ids(piece)],
                               t_emb[teacher.preprocessor.convert_tokens_to_ids(piece)])


def test_narrow_student_starts_from_projected_teacher_embeddings(tiny_teacher):
    task = tasks.get("text-classification")
    teacher = task.load_teacher(str(tiny_teacher), ["neg", "pos"], {"max_length": 32})
    student = task.build_student(teacher, {"layers": 1, "hidden": 16})
    assert student.model.config.hidden_size == 16
    t = teacher.model.get_input_embeddings().weight.detach()
    s = student.model.get_input_embeddings().weight.detach()
    # Projection onto principal directions preserves which words are close: compare cosine similarities.
    idx = torch.arange(2000, 2200)
    tc = torch.nn.functional.normalize(t[idx] - t.mean(0), dim=1)
    sc = torch.nn.functional.normalize(s[idx], dim=1)
    corr = torch.corrcoef(torch.stack([(tc @ tc.T).flatten(), (sc @ sc.T).flatten()]))[0, 1]
    assert corr > 0.3
