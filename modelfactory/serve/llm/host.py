"""One base model with LoRA adapters hot-loaded onto it, run with a per-row adapter choice (peft's mixed batch)."""

from __future__ import annotations

from typing import Any

import torch

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterHost:
    """One base model and the LoRA adapters loaded onto it, run with a per-row adapter choice.

    The base is wrapped into a peft `PeftModel` when the first adapter is loaded (until then rows can only use the
    bare base); adapters come and go with `load` / `delete` (peft's `load_adapter` / `delete_adapter`). A forward
    passes each row's adapter to peft's LoRA layers as their `adapter_names` argument, peft's mixed-batch
    inference. peft's own `PeftModel.forward(adapter_names=...)` walks every module of the model twice per call to
    set that up, which on CPU costs as much as the base's forward itself at batch 1; so the host hooks the LoRA
    layers once (again after each load, which may wrap more layers) and hands them the list per forward.
    Only the engine thread, or a caller holding `Engine.lock`, may touch it.
    """

    def __init__(self, model: torch.nn.Module):
        self.base = model
        self.peft: Any = None
        self._rows: list[str] | None = None
        self._hooked: set[int] = set()

    @property
    def names(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def device(self) -> torch.device:
        """Where the base's weights are: every tensor fed to it is built there (CPU, or a GPU)."""
        return next(self.base.parameters()).device

    def load(self, name: str, path: str) -> None:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name, is_trainable=False)
        else:
            self.peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self.peft.eval()
        for module in self.peft.modules():
            if isinstance(module, LoraLayer | AuxiliaryTrainingWrapper) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._rows is None:
            return None
        kwargs["adapter_names"] = self._rows
        return args, kwargs

    def delete(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            return
        others = [n for n in self.peft.peft_config if n != name]
        if others and name in self.peft.active_adapters:
            self.peft.set_adapter(others[-1])  # rows choose their adapter by name; this only keeps peft quiet
        self.peft.delete_adapter(name)

    def forward(self, adapters: list[str], **kwargs: Any) -> Any:
        """The model's forward with row i using adapter `adapters[i]` (BASE: the bare base)."""
        if self.peft is None:
            if any(a != BASE for a in adapters):
                raise RuntimeError(f"adapters {sorted(set(adapters) - {BASE})} are not loaded")
            return self.base(**kwargs)
        missing = set(adapters) - {BASE} - set(self.peft.peft_config)
        if missing:
            raise RuntimeError(f"adapters {sorted(missing)} are not loaded")
        self._rows = adapters
        try:
            return self.peft.get_base_model()(**kwargs)
        finally:
            self._rows = None
