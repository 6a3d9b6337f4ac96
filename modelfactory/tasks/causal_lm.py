"""Causal language models, adapted with LoRA: the `causal-lm` family (the factory's "adapt" pipeline).

The base (any Hugging Face causal LM, a local dir or a hub id) stays frozen and shared by every order on it; an
order trains only a LoRA adapter (peft) on its conversations and stores just that (safetensors, a few MB), which
`mf serve-llm` hot-loads next to every other tenant's adapter on one copy of the base.

Data: JSONL rows of `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}` (chat, formatted
with the base tokenizer's chat template), or `{"prompt": "...", "completion": "..."}` pairs (plain text). The loss
counts only what the model should learn to say: the assistant turns, or the completion. A row longer than the
context (`teacher.max_length`) stops the order with the rows named, unless `data.truncate` cuts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from ..data.ingest import peek_columns
from ..errors import MFError
from .base import GenerativeFamily, write_meta

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a token the loss does not count


def check_messages(role: str, value: object) -> str | None:
    """A conversation: a non-empty list of {role, content} turns with at least one assistant turn to learn."""
    if not isinstance(value, list) or not value:
        return f"'{role}' must be a non-empty list of {{role, content}} turns"
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or set(turn) - {"role", "content", "name"}:
            return f"turn {i + 1}: expected an object with 'role' and 'content'"
        if turn.get("role") not in ROLES:
            return f"turn {i + 1}: role {turn.get('role')!r} is not one of {', '.join(ROLES)}"
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            return f"turn {i + 1}: empty or missing content"
    if not any(t["role"] == "assistant" for t in value):
        return "no assistant turn: nothing to learn from this conversation"
    return None


def check_text(role: str, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"empty {role}" if isinstance(value, str) else f"missing {role}"
    return None


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]


class CausalLM(GenerativeFamily):
    name: ClassVar[str] = "causal-lm"
    roles: ClassVar[tuple[str, ...]] = ("messages",)

    # --- data ---------------------------------------------------------------------------------------
    def data_roles(self, columns: Mapping[str, str], path: Path | None = None) -> dict[str, str]:
        """Chat rows when the file has the messages column, else prompt/completion pairs."""
        messages = columns.get("messages", "messages")
        if path is not None and messages not in peek_columns(path):
            return {"prompt": columns.get("prompt", "prompt"), "completion": columns.get("completion", "completion")}
        return {"messages": messages}

    def row_checks(self):
        return {"messages": check_messages, "prompt": check_text, "completion": check_text}

    # --- training -----------------------------------------------------------------------------------
    def encode(self, tokenizer, df: pd.DataFrame, max_length: int, truncate: bool) -> Encoded:
        """Token ids and labels (IGNORE outside what the model should say) for each row; rows over `max_length`
        are cut when `truncate`, else refused, naming them."""
        out = Encoded([], [])
        too_long: list[str] = []
        for i, row in enumerate(df.to_dict("records")):
            ids, labels = (_chat_tokens(tokenizer, json.loads(row["messages"])) if "messages" in row
                           else _completion_tokens(tokenizer, row["prompt"], row["completion"]))
            if len(ids) > max_length:
                if not truncate:
                    too_long.append(f"row {i + 1} ({len(ids)} tokens)")
                    continue
                ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE for label in labels):
                continue  # truncation cut every token to learn: nothing left to train on
            out.input_ids.append(ids)
            out.labels.append(labels)
        if too_long:
            shown = ", ".join(too_long[:10]) + (f" and {len(too_long) - 10} more" if len(too_long) > 10 else "")
            raise MFError(f"{len(too_long)} row(s) longer than the context of {max_length} tokens: {shown}; "
                          f"raise teacher.max_length or cut them with data.truncate (mf order run --truncate)")
        if not out.input_ids:
            raise MFError("no row has any assistant/completion token left to learn from")
        return out

    def adapt(self, base: str, train: pd.DataFrame, val: pd.DataFrame, params: Mapping[str, Any], out_dir: Path,
              work: Path, *, should_stop, progress) -> dict[str, Any]:
        from peft import LoraConfig, get_peft_model

        from ..train.loop import Checkpoint, config_from, fit

        tokenizer, model = _load_base(base)
        lora = params["lora"]
        torch.manual_seed(params.get("seed", 0))  # the adapter's random init: the same order, the same adapter
        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
        data = self.encode(tokenizer, train, params["max_length"], params["truncate"])
        pad = tokenizer.pad_token_id
        cfg = config_from(params, checkpoint_every=params.get("_checkpoint_every", 50))
        result = fit(model, len(data.input_ids), lambda idx: _batch(data, idx, pad),
                     lambda m, batch, idx: m(**batch).loss, cfg, Checkpoint(work / "checkpoint", trainable_only=True),
                     on_step=lambda s, t, loss: progress(s, t, f"loss {loss:.3f}"), should_stop=should_stop)
        model.eval()
        val_loss = _mean_loss(model, self.encode(tokenizer, val, params["max_length"], True), pad)
        model.save_pretrained(out_dir)
        write_meta(out_dir, {"task": self.name, "kind": "lora-adapter", "base_model": base,
                             "max_length": params["max_length"], "lora": dict(lora)})
        size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"steps": result.steps, "final_loss": result.final_loss, "val_loss": val_loss,
                "val_perplexity": math.exp(min(val_loss, 50)), "trainable_parameters": trainable,
                "size_bytes": size, "resumed_from_step": result.resumed_from_step}

    def evaluate(self, base: str, adapter_dir: Path | None, test: pd.DataFrame,
                 params: Mapping[str, Any]) -> dict[str, Any]:
        tokenizer, model = _load_base(base)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
        data = self.encode(tokenizer, test, params["max_length"], True)
        loss = _mean_loss(model, data, tokenizer.pad_token_id)
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50)),
                "eval_tokens": sum(sum(label != IGNORE for label in row) for row in data.labels),
                "rows": len(data.input_ids)}


# --- helpers ------------------------------------------------------------------------------------------------
def _load_base(base: str):
    from transformers import AutoModelForCausalLM

    from .lm_common import chat_tokenizer
    from .pretrained import load_error, resolve

    try:
        tokenizer = chat_tokenizer(base)
        model = AutoModelForCausalLM.from_pretrained(resolve(base), dtype=torch.float32)
    except OSError as e:
        raise load_error(base, e) from None
    return tokenizer, model


def _chat_tokens(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """The conversation through the chat template; labels on each assistant turn's tokens only. Each assistant
    span is found as the text the template adds between the conversation up to that turn with a generation
    prompt, and the conversation including the turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not text.startswith(upto) or not upto.startswith(before):
            raise MFError("the chat template does not render conversations as prefixes of each other; cannot find "
                          "the assistant turns to learn")
        spans.append((len(before), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tok if any(a <= start < b for a, b in spans) else IGNORE
              for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def _completion_tokens(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """prompt + completion + EOS, as /v1/completions will see the prompt; labels on the completion and EOS."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and getattr(
        tokenizer, "add_bos_token", False) else []
    return bos + p + c + eos, [IGNORE] * (len(bos) + len(p)) + c + eos


def _batch(data: Encoded, idx, pad: int) -> dict[str, torch.Tensor]:
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(idx):
        n = len(data.input_ids[i])
        ids[j, :n] = torch.tensor(data.input_ids[i])
        labels[j, :n] = torch.tensor(data.labels[i])
        mask[j, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def _mean_loss(model, data: Encoded, pad: int, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per learned token (what perplexity exponentiates)."""
    total, count = 0.0, 0
    for start in range(0, len(data.input_ids), batch_size):
        batch = _batch(data, range(start, min(start + batch_size, len(data.input_ids))), pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                ignore_index=IGNORE, reduction="sum")
        total, count = total + nll.item(), count + int((target != IGNORE).sum())
    return total / max(count, 1)
