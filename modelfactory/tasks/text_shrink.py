"""A transformer student made by shrinking the teacher: which teacher layers it keeps, the weights it copies, a
narrower width's embeddings, and a vocabulary cut to the training data. Each step starts the student from what the
teacher learned rather than from random weights."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import torch

from .base import Bundle

_LAYER_RE = re.compile(r"(\.layers?\.)(\d+)(\.)")


def layer_map(teacher_layers: int, student_layers: int, strategy: str | Sequence[int] = "bottom") -> list[int]:
    """Which teacher layer initialises each student layer.

    'bottom' keeps the lowest layers (top-layer dropping is the most robust choice in Sajjad et al. 2020,
    "Poor Man's BERT"); 'uniform' keeps every k-th layer, DistilBERT style; a list names them explicitly.
    """
    if not isinstance(strategy, str):
        chosen = list(strategy)
    elif strategy == "bottom":
        chosen = list(range(student_layers))
    elif strategy == "uniform":
        step = teacher_layers / student_layers
        chosen = [min(teacher_layers - 1, int(round((i + 1) * step)) - 1) for i in range(student_layers)]
    else:
        raise ValueError(f"unknown layer map '{strategy}' (use 'bottom', 'uniform' or a list of layer indices)")
    if len(chosen) != student_layers or any(not 0 <= i < teacher_layers for i in chosen):
        raise ValueError(f"layer map {chosen} does not fit {student_layers} student / {teacher_layers} teacher layers")
    return chosen


def init_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module, chosen: list[int]) -> int:
    """Copy every teacher tensor whose (layer-remapped) name and shape match; returns how many were copied."""
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    copied = 0
    for key, tensor in s_state.items():
        src = _LAYER_RE.sub(lambda m: f"{m.group(1)}{chosen[int(m.group(2))]}{m.group(3)}", key, count=1)
        if src in t_state and t_state[src].shape == tensor.shape:
            s_state[key] = t_state[src].clone()
            copied += 1
    student.load_state_dict(s_state)
    return copied


def init_narrow_embeddings(student: torch.nn.Module, teacher: torch.nn.Module, width: int) -> None:
    """A narrower student cannot copy the teacher's embeddings, but it can start from their projection onto the
    top-`width` principal directions of the teacher's word-embedding space (the same basis for word, position and
    token-type embeddings, since the model adds them): lexical similarity survives, training starts far from
    random."""
    t_emb, s_emb = teacher.base_model.embeddings, student.base_model.embeddings
    words = t_emb.word_embeddings.weight.detach()
    with torch.random.fork_rng():  # pca_lowrank is randomised: the same teacher gives the same student
        torch.manual_seed(0)
        _, _, v = torch.pca_lowrank(words, q=width, center=True)  # v: [teacher_width, width]
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            src, dst = getattr(t_emb, name, None), getattr(s_emb, name, None)
            if src is not None and dst is not None and dst.weight.shape[0] <= src.weight.shape[0]:
                dst.weight.copy_(src.weight.detach()[: dst.weight.shape[0]] @ v)  # fewer positions: the first


def shrink_vocab(bundle: Bundle, texts: Sequence[str]) -> Bundle:
    """Keep only the word pieces the training texts use (plus special and single-character pieces, so unseen
    words still split into characters rather than [UNK]) and slice the embedding matrix to match.

    WordPiece is greedy longest-match-first, so every kept text tokenizes exactly as before; the embedding
    matrix, which dominates a small student's size, shrinks to the data's vocabulary.
    """
    tok = bundle.preprocessor
    backend = json.loads(tok.backend_tokenizer.to_str())
    if backend["model"]["type"] != "WordPiece" or not hasattr(tok, "do_lower_case"):
        raise ValueError("vocabulary pruning supports WordPiece (BERT-style) tokenizers only")
    vocab = tok.get_vocab()
    used = {i for ids in tok(list(texts), truncation=False)["input_ids"] for i in ids}
    used |= set(tok.all_special_ids)
    used |= {i for piece, i in vocab.items() if len(piece.removeprefix("##")) == 1}
    keep = sorted(used)
    by_id = {i: piece for piece, i in vocab.items()}
    new_tok = type(tok)(vocab={by_id[i]: n for n, i in enumerate(keep)}, do_lower_case=tok.do_lower_case,
                        strip_accents=backend["normalizer"].get("strip_accents") if backend.get("normalizer") else None)
    model = bundle.model
    old = model.get_input_embeddings()
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=keep.index(tok.pad_token_id))
    new.weight.data.copy_(old.weight.data[torch.tensor(keep)])
    new.weight.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = new_tok.pad_token_id
    return Bundle(model, new_tok, bundle.labels, {**bundle.extra, "vocab_size": len(keep)})
