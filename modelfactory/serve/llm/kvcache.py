"""The running batch's KV cache, spliced as sequences join and leave, so a request joins at the next decode step
instead of waiting for the batch to end.

It is one transformers `DynamicCache` whose per-layer key/value tensors (`[batch, kv_heads, columns, head_dim]`)
this class edits between forwards: rows are left-padded to a common number of columns, an attention mask marks
the real ones, and each row's explicit `position_ids` make padding change nothing it computes. That only holds
for layers that are a plain `DynamicLayer` (Llama-, Qwen-, GPT-2-style models); `check` refuses the others.
"""

from __future__ import annotations

from typing import Any

import torch


def new_cache(config: Any) -> Any:
    """An empty cache for one forward of a model with this config."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def check(cache: Any) -> None:
    """Refuse, with a clear message, a model whose cache layers this class cannot splice (after one forward)."""
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        kinds = {type(layer).__name__ for layer in cache.layers}
        raise ValueError(f"unsupported model for continuous batching: its KV cache layers are {kinds} "
                         f"(only full-attention DynamicLayer models: Llama-, Qwen-, GPT-2-style)")


class BatchCache:
    """The cache and attention mask (`[rows, columns]`) of the rows decoding together; empty when no row runs."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.mask is None

    def clear(self) -> None:
        self.cache, self.mask = None, None

    def grow(self) -> torch.Tensor:
        """The mask for the next decode step (one more real column per row); `commit` it once the forward ran."""
        assert self.mask is not None
        ones = torch.ones(self.mask.shape[0], 1, dtype=torch.long, device=self.mask.device)
        return torch.cat([self.mask, ones], dim=1)

    def commit(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def join(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the rows of a prefill's `cache` and `mask` below the running ones, left-padding the narrower."""
        if self.mask is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)], dim=0)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order) and cut the columns that have become padding for all of them."""
        if not rows:
            self.clear()
            return
        assert self.mask is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        cut = int(used[0]) if len(used) else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:].contiguous()
            layer.values = layer.values.index_select(0, index)[:, :, cut:].contiguous()
        self.mask = mask[:, cut:].contiguous()


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
