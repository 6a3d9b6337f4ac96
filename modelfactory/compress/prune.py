"""Structured pruning with Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023), over what a task family
says may be pruned (`TaskFamily.prunable` -> `tasks.base.Prunable`): convolution channels, transformer heads and
FFN channels. The graph carries every removal through what consumes those channels (batch norms, the next layer's
inputs, residual additions, the attention output projection); the family's `finish` then makes the model
consistent again and records what its `load` needs. The model really gets smaller: fewer parameters, a smaller
file, not a mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch_pruning as tp
from torch import nn

from ..tasks.base import Prunable
from ..tasks.hf_prune import encoder_prunable, reloadable

__all__ = ["prune", "prune_model", "reloadable"]


def prune(p: Prunable, ratio: float) -> dict:
    """Remove about `ratio` of every prunable layer's output channels (whole heads where `p.num_heads` says so), in
    place, ranked by weight magnitude with the same share in every layer. Returns parameters_before/after plus what
    the family's `finish` reports."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    heads = min(p.num_heads.values(), default=0)
    if heads and math.ceil(ratio * heads) >= heads:
        raise ValueError(f"ratio {ratio} would remove all {heads} heads of a layer")
    parameters_before = sum(x.numel() for x in p.model.parameters())
    with torch.enable_grad():  # the dependency graph is traced through autograd, even if the caller is in no_grad
        pruner = tp.pruner.MetaPruner(
            p.model, p.example, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, global_pruning=False,  # local ranking: every layer loses the same share
            num_heads=dict(p.num_heads), prune_num_heads=bool(p.num_heads), prune_head_dims=False,
            head_pruning_ratio=ratio, ignored_layers=list(p.ignored_layers), output_transform=p.output_transform,
            in_channel_groups={}, out_channel_groups={})  # fresh dicts: Torch-Pruning mutates its shared defaults
        pruner.step()
    return {"parameters_before": parameters_before,
            "parameters_after": sum(x.numel() for x in p.model.parameters()), **p.finish()}


def prune_model(model: nn.Module, example_inputs: Mapping[str, torch.Tensor], *, ratio: float,
                prune_heads: bool = True, prune_ffn: bool = True) -> dict:
    """A Hugging Face encoder's heads and FFN channels (tasks/hf_prune.py): also reports heads_before/after,
    ffn_before/after and reloadable (False, with a warning, when its config cannot describe the result)."""
    return prune(encoder_prunable(model, example_inputs, prune_heads=prune_heads, prune_ffn=prune_ffn), ratio)
