"""What may be pruned in a Hugging Face transformer encoder, described for compress.prune (which runs Torch-Pruning
over the description), and how a pruned one is rebuilt from its checkpoint.

Only two kinds of layer may lose *output* channels: the attention query/key/value projections (whole heads, the
same number in every layer, so one config value describes them) and the FFN up-projections. Every other
Linear/Embedding is an ignored layer, which keeps the hidden size, embeddings, pooler and classifier intact; the
dependency graph then removes the matching *input* channels of the attention output projection and the FFN
down-projection. Afterwards `finish` rewrites the attention modules' head counts and the config so the model keeps
working, and checks whether `from_pretrained` could rebuild it: some architectures (BERT, DeBERTa-v2 in
transformers 5) tie the attention width to hidden_size, so a head-pruned checkpoint has no config
(`fit_to_checkpoint` rebuilds those).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from .base import Prunable

# Child names of the q/k/v projections in HF attention modules (BERT/RoBERTa, DeBERTa-v2, DistilBERT, Llama-style).
QKV_NAMES = (("query", "key", "value"), ("query_proj", "key_proj", "value_proj"), ("q_lin", "k_lin", "v_lin"),
             ("q_proj", "k_proj", "v_proj"))
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads")


def attention_modules(model: nn.Module) -> dict[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear]]:
    """Attention modules found by walking the model: any module with three Linear q/k/v children."""
    found = {}
    for module in model.modules():
        for names in QKV_NAMES:
            linears = tuple(getattr(module, n, None) for n in names)
            if all(isinstance(lin, nn.Linear) for lin in linears):
                found[module] = linears
                break
    return found


def _num_heads(attn: nn.Module, default: int) -> int:
    return next((getattr(attn, a) for a in HEAD_ATTRS if hasattr(attn, a)), default)


def reloadable(model: nn.Module) -> bool:
    """Whether `type(model)(model.config)` has exactly the model's parameter shapes, i.e. whether
    `from_pretrained` can reload a save of it. Built on the meta device: no memory, no compute."""
    with torch.device("meta"):
        fresh = type(model)(model.config).state_dict()
    return all(fresh[k].shape == v.shape for k, v in model.state_dict().items() if k in fresh)


def _set_heads(model: nn.Module, head_size: dict[nn.Module, int]) -> None:
    """Make the attention modules and the config agree with the q/k/v widths (the forward reshapes with them)."""
    attentions = attention_modules(model)
    for attn, (q, _, _) in attentions.items():
        for attr in HEAD_ATTRS:
            if hasattr(attn, attr):
                setattr(attn, attr, q.out_features // head_size[attn])
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = q.out_features
    first_attn, (first_q, _, _) = next(iter(attentions.items()))
    model.config.num_attention_heads = first_q.out_features // head_size[first_attn]


def encoder_prunable(model: nn.Module, example: Mapping[str, torch.Tensor], *, prune_heads: bool = True,
                     prune_ffn: bool = True) -> Prunable:
    """Heads (q/k/v, whole) and FFN up-projection channels of every layer; `finish` reports heads_before/after,
    ffn_before/after and reloadable (False, with a warning, when the config class cannot describe the result)."""
    config = model.config
    heads_before, ffn_before = config.num_attention_heads, config.intermediate_size
    attentions = attention_modules(model)
    if not attentions:
        raise ValueError(f"no attention module with q/k/v Linear children ({QKV_NAMES}) in {type(model).__name__}")
    head_size = {attn: q.out_features // _num_heads(attn, heads_before) for attn, (q, _, _) in attentions.items()}
    ffn = [m for m in model.modules()  # FFN up-projections: hidden_size -> intermediate_size
           if isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (config.hidden_size, ffn_before)]
    prunable = set(ffn) if prune_ffn else set()
    num_heads: dict[nn.Module, int] = {}
    if prune_heads:
        for attn, qkv in attentions.items():
            prunable.update(qkv)
            num_heads.update(dict.fromkeys(qkv, _num_heads(attn, heads_before)))
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding) and m not in prunable]

    def finish() -> dict:
        _set_heads(model, head_size)
        config.intermediate_size = ffn[0].out_features if ffn else ffn_before
        ok = reloadable(model)
        if not ok:
            warnings.warn(f"{type(model).__name__} derives its layer shapes from hidden_size, so its config cannot "
                          "describe this pruned model and from_pretrained would not reload it; prune_heads=False "
                          "keeps it reloadable", stacklevel=3)
        return {"heads_before": heads_before, "heads_after": config.num_attention_heads,
                "ffn_before": ffn_before, "ffn_after": config.intermediate_size, "reloadable": ok}

    return Prunable(model, dict(example), ignored_layers=ignored, num_heads=num_heads,
                    output_transform=lambda out: out.logits, finish=finish)


def fit_to_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Shape an unpruned encoder like a pruned checkpoint of it: every Linear the checkpoint has narrower is
    replaced by one of the saved shape, then the head counts and config follow (`load_state_dict` fills the
    weights, strictly, which fails loudly if any shape still differs)."""
    config = model.config
    head_size = {attn: q.out_features // _num_heads(attn, config.num_attention_heads)
                 for attn, (q, _, _) in attention_modules(model).items()}
    ffn = [name for name, m in model.named_modules()  # FFN up-projections, as in `encoder_prunable`
           if isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (config.hidden_size,
                                                                                config.intermediate_size)]
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None))
    _set_heads(model, head_size)
    if ffn:
        config.intermediate_size = model.get_submodule(ffn[0]).out_features
    return model
