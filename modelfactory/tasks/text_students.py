"""Small text students that are not shrunken transformers: a fastText-style bag of words and hashed bigrams, a
1-D CNN (Kim 2014) and a BiLSTM (Tang et al. 2019's student), over a word vocabulary chosen from the data or the
teacher's word pieces.

Each takes the same feeds as an encoder (`input_ids`, `attention_mask`) and ship a `tokenizer.json` beside their
ONNX graph, so the text family's predictor, `mf serve` and tritonclient use them unchanged. They train in seconds,
which is what lets a search afford dozens of trials. Their word embeddings may start from the teacher's own token
embeddings (each word the mean of its word pieces, projected on the principal directions: model2vec's idea
without its extra forward passes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PAD, UNK = "[PAD]", "[UNK]"
BIGRAM_PRIME = 1_000_003  # ids < 10^6, so id * prime + id stays far inside int64


@dataclass
class StudentLogits:
    """What an encoder returns, reduced to what distillation reads."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# name -> size preset -> constructor arguments; a search samples (arch, size), the family turns it into a model.
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "bag": {"xs": {"dim": 32, "buckets": 4096, "vocab": 8000}, "s": {"dim": 48, "buckets": 8192, "vocab": 12000},
            "m": {"dim": 64, "buckets": 16384, "vocab": 20000}, "l": {"dim": 96, "buckets": 32768, "vocab": 30000}},
    "cnn": {"xs": {"dim": 32, "filters": 32, "vocab": 8000}, "s": {"dim": 48, "filters": 64, "vocab": 12000},
            "m": {"dim": 64, "filters": 96, "vocab": 20000}, "l": {"dim": 96, "filters": 128, "vocab": 30000}},
    "lstm": {"xs": {"dim": 32, "hidden": 48, "vocab": 8000}, "s": {"dim": 48, "hidden": 64, "vocab": 12000},
             "m": {"dim": 64, "hidden": 96, "vocab": 20000}, "l": {"dim": 96, "hidden": 128, "vocab": 30000}},
}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """Max over time with padded steps pushed far below any real value (`time_dim` 1: [batch, time, features];
    -1: [batch, features, time])."""
    neg = (1 - mask.to(x.dtype)) * -1e4
    return (x + (neg.unsqueeze(-1) if time_dim == 1 else neg.unsqueeze(1))).amax(time_dim)


class BagOfNgrams(nn.Module):
    """fastText (Joulin et al. 2017): the mean of word embeddings plus the mean of hashed bigram embeddings, then
    one linear layer. Bigram ids are hashed inside the graph, so the tokenizer stays a plain word vocabulary."""

    def __init__(self, vocab: int, classes: int, dim: int = 64, buckets: int = 16384, dropout: float = 0.2):
        super().__init__()
        self.config = {"arch": "bag", "vocab": vocab, "classes": classes, "dim": dim, "buckets": buckets,
                       "dropout": dropout}
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.bigrams = nn.Embedding(buckets, dim)
        nn.init.normal_(self.bigrams.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> StudentLogits:
        words = masked_mean(self.embed(input_ids), attention_mask)
        pair_ids = (input_ids[:, :-1] * BIGRAM_PRIME + input_ids[:, 1:]) % self.config["buckets"]
        pair_mask = attention_mask[:, :-1] * attention_mask[:, 1:]
        pairs = masked_mean(self.bigrams(pair_ids), pair_mask)
        return StudentLogits(self.head(self.drop(words + pairs)))


class TextCNN(nn.Module):
    """Kim (2014): word embeddings, parallel convolutions of width 2-4, max over time (padding masked out), one
    linear layer."""

    def __init__(self, vocab: int, classes: int, dim: int = 64, filters: int = 64, widths: Sequence[int] = (2, 3, 4),
                 dropout: float = 0.3):
        super().__init__()
        self.config = {"arch": "cnn", "vocab": vocab, "classes": classes, "dim": dim, "filters": filters,
                       "widths": list(widths), "dropout": dropout}
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w // 2) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(filters * len(widths), classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> StudentLogits:
        x = self.embed(input_ids).transpose(1, 2)  # [batch, dim, time]
        seq = input_ids.shape[1]
        pooled = [masked_max(torch.relu(conv(x))[:, :, :seq], attention_mask, time_dim=-1) for conv in self.convs]
        return StudentLogits(self.head(self.drop(torch.cat(pooled, -1))))


class BiLSTM(nn.Module):
    """Tang et al. (2019)'s distillation student: word embeddings, an LSTM each way, max over time (padding
    masked out), one linear layer. It reads word order whole, not in windows of 2-4 as the CNN does.

    The backward LSTM reads each row's own tokens reversed (a gather by the row's length), so padding stays at
    the end for both directions and a row's answer does not depend on how long its batch companions are - which
    `nn.LSTM(bidirectional=True)` on padded rows would not give, and a server that batches requests needs."""

    def __init__(self, vocab: int, classes: int, dim: int = 48, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.config = {"arch": "lstm", "vocab": vocab, "classes": classes, "dim": dim, "hidden": hidden,
                       "dropout": dropout}
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.forward_rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.backward_rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> StudentLogits:
        x = self.embed(input_ids)  # [batch, time, dim]
        steps = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        length = attention_mask.sum(1, keepdim=True)
        reverse = torch.where(steps < length, length - 1 - steps, steps)  # its own inverse
        ahead, _ = self.forward_rnn(x)
        back, _ = self.backward_rnn(x.gather(1, reverse.unsqueeze(-1).expand_as(x)))
        back = back.gather(1, reverse.unsqueeze(-1).expand_as(back))
        states = torch.cat([ahead, back], -1)
        return StudentLogits(self.head(self.drop(masked_max(states, attention_mask))))


ARCHS: dict[str, type[nn.Module]] = {"bag": BagOfNgrams, "cnn": TextCNN, "lstm": BiLSTM}


def build(config: Mapping[str, Any]) -> nn.Module:
    args = {k: v for k, v in config.items() if k != "arch"}
    return ARCHS[config["arch"]](**args)


def student_config(arch: str, params: Mapping[str, Any], classes: int) -> dict[str, Any]:
    """The constructor arguments for `arch` from a size preset and explicit overrides (`dim`, `buckets`, ...)."""
    if arch not in SIZES:
        raise ValueError(f"unknown student arch '{arch}' (use one of {sorted(SIZES)}, 'transformer' or 'classical')")
    size = params.get("size") or "m"
    if size not in SIZES[arch]:
        raise ValueError(f"unknown size '{size}' for {arch} students (use one of {sorted(SIZES[arch])})")
    cfg = dict(SIZES[arch][size])
    cfg.update({k: int(params[k]) for k in ("dim", "buckets", "filters", "hidden", "vocab") if params.get(k)})
    return {"arch": arch, "classes": classes, **cfg}


def word_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int):
    """A lower-cased word-level tokenizer (BERT's punctuation splitting) over the `vocab_size` most frequent
    words of `texts`, as a transformers fast tokenizer (saved as tokenizer.json, read back by `tokenizers`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=[PAD, UNK],
                                        show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD,
                                   model_max_length=max_length)
    return fast


def teacher_word_vectors(words: Sequence[str], teacher_embeddings: torch.Tensor, teacher_tokenizer,
                         dim: int) -> torch.Tensor:
    """Static word vectors from the teacher: each word is the mean of its word pieces' input embeddings, and the
    vectors are projected on their top-`dim` principal directions (PCA), scaled to unit average norm."""
    pieces = teacher_tokenizer(list(words), add_special_tokens=False)["input_ids"]
    emb = teacher_embeddings.detach().float()
    vecs = torch.stack([emb[ids].mean(0) if ids else torch.zeros(emb.shape[1]) for ids in pieces])
    return _principal_projection(vecs, dim)


def _principal_projection(vecs: torch.Tensor, dim: int) -> torch.Tensor:
    """`vecs` projected on their top-`dim` principal directions (zero-padded if fewer exist), scaled to unit
    average norm."""
    q = min(dim, vecs.shape[0], vecs.shape[1])
    with torch.random.fork_rng():  # pca_lowrank is randomised: the same teacher gives the same student
        torch.manual_seed(0)
        _, _, v = torch.pca_lowrank(vecs, q=q, center=True)
    out = torch.zeros(vecs.shape[0], dim)
    out[:, :q] = (vecs - vecs.mean(0)) @ v
    return out / out.norm(dim=1).mean().clamp(min=1e-6)


_OUTPUTS: dict[tuple, torch.Tensor] = {}  # teacher fingerprint -> its per-token outputs (one search, many trials)


def teacher_output_vectors(encoder: nn.Module, vocab_size: int, dim: int, batch: int = 512) -> torch.Tensor:
    """model2vec's static embeddings (Tulkens & van Dongen 2024): every token of the teacher's vocabulary passed
    through the (fine-tuned) encoder alone, between its special tokens, mean-pooled, then PCA to `dim`. The
    encoder's outputs are kept per process, so a search's trials pay for them once."""
    weights = encoder.get_input_embeddings().weight.detach()
    key = (vocab_size, tuple(weights.shape), float(weights[:4].double().sum()), float(weights[-4:].double().sum()))
    if key not in _OUTPUTS:
        _OUTPUTS.clear()
        _OUTPUTS[key] = _token_outputs(encoder, vocab_size, batch)
    return _principal_projection(_OUTPUTS[key], dim)


def _token_outputs(encoder: nn.Module, vocab_size: int, batch: int) -> torch.Tensor:
    base = encoder.base_model
    cls_id = getattr(encoder.config, "bos_token_id", None) or 101
    sep_id = getattr(encoder.config, "eos_token_id", None) or 102
    out = []
    encoder.eval()
    with torch.no_grad():
        for start in range(0, vocab_size, batch):
            ids = torch.arange(start, min(start + batch, vocab_size))
            seq = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
            hidden = base(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state
            out.append(hidden.mean(1))
    return torch.cat(out)
