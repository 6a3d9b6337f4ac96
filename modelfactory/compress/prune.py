"""Structured pruning with Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023): one mechanism, two
callers. `prune_channels` removes convolution channels; `prune_model` removes transformer heads and FFN channels.

In a transformer encoder, only two kinds of layer may lose *output* channels: the attention query/key/value
projections (whole heads, the same number in every layer, so one config value describes them) and the FFN up-
projections. Every other Linear/Embedding is an ignored layer, which keeps the hidden size, embeddings, pooler and
classifier intact; the graph then removes the matching *input* channels of the attention output projection and the
FFN down-projection. Afterwards the attention modules' head counts and the config are rewritten so the model keeps
working and `save_pretrained` / `from_pretrained` can rebuild it, and we check that they really can: some
architectures (BERT, DeBERTa-v2 in transformers 5) tie the attention width to hidden_size, so a head-pruned
checkpoint has no config.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch_pruning as tp
from torch import nn

# Child names of the q/k/v projections in HF attention modules (BERT/RoBERTa, DeBERTa-v2, DistilBERT, Llama-style).
QKV_NAMES = (("query", "key", "value"), ("query_proj", "key_proj", "value_proj"), ("q_lin", "k_lin", "v_lin"),
             ("q_proj", "k_proj", "v_proj"))
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads")


def _attention_modules(model: nn.Module) -> dict[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear]]:
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


def prune_model(model: nn.Module, example_inputs: dict[str, torch.Tensor], *, ratio: float,
                prune_heads: bool = True, prune_ffn: bool = True) -> dict:
    """Remove about `ratio` of every layer's attention heads and FFN channels, in place, ranked by weight magnitude.

    Returns parameters_before/after, heads_before/after (per layer), ffn_before/after (intermediate size) and
    reloadable (False, with a warning, when the model's config class cannot describe the pruned shapes).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    config = model.config
    heads_before, ffn_before = config.num_attention_heads, config.intermediate_size
    if prune_heads and math.ceil(ratio * heads_before) >= heads_before:
        raise ValueError(f"ratio {ratio} would remove all {heads_before} heads of a layer")

    attentions = _attention_modules(model)
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

    parameters_before = sum(p.numel() for p in model.parameters())
    with torch.enable_grad():  # the dependency graph is traced through autograd, even if the caller is in no_grad
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, global_pruning=False,  # local ranking: every layer loses the same share
            num_heads=num_heads, prune_num_heads=prune_heads, prune_head_dims=False, head_pruning_ratio=ratio,
            ignored_layers=ignored, output_transform=lambda out: out.logits,
            in_channel_groups={}, out_channel_groups={})  # fresh dicts: Torch-Pruning mutates its shared defaults
        pruner.step()

    for attn, (q, _, _) in attentions.items():  # the forward reshapes with these, so they must follow the weights
        for attr in HEAD_ATTRS:
            if hasattr(attn, attr):
                setattr(attn, attr, q.out_features // head_size[attn])
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = q.out_features
    first_attn, (first_q, _, _) = next(iter(attentions.items()))
    config.num_attention_heads = first_q.out_features // head_size[first_attn]
    config.intermediate_size = ffn[0].out_features if ffn else ffn_before

    ok = reloadable(model)
    if not ok:
        warnings.warn(f"{type(model).__name__} derives its layer shapes from hidden_size, so its config cannot "
                      "describe this pruned model and from_pretrained would not reload it; prune_heads=False keeps "
                      "it reloadable", stacklevel=2)
    return {"parameters_before": parameters_before, "parameters_after": sum(p.numel() for p in model.parameters()),
            "heads_before": heads_before, "heads_after": config.num_attention_heads,
            "ffn_before": ffn_before, "ffn_after": config.intermediate_size, "reloadable": ok}


def prune_channels(model: nn.Module, example_inputs: dict[str, torch.Tensor], *, ratio: float,
                   ignored_layers: list[nn.Module]) -> dict:
    """Remove about `ratio` of every convolution's output channels, in place, ranked by weight magnitude.

    The dependency graph carries each removal through what consumes those channels: the batch norm after the
    conv, the next conv's inputs, every branch joined by a residual addition, the classifier's inputs. Layers in
    `ignored_layers` (the classifier: its outputs are the labels) keep their outputs.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    parameters_before = sum(p.numel() for p in model.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    channels_before = sum(m.out_channels for m in convs)
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, global_pruning=False, ignored_layers=list(ignored_layers),
            in_channel_groups={}, out_channel_groups={})
        pruner.step()
    return {"parameters_before": parameters_before, "parameters_after": sum(p.numel() for p in model.parameters()),
            "channels_before": channels_before, "channels_after": sum(m.out_channels for m in convs)}
