"""What fine-tuning (training) and the generation server (`mf serve-llm`) must agree on for causal language models,
so that an adapter sees at serving time exactly the text layout it was trained on.

- `chat_tokenizer(base)`: the base's tokenizer with a chat template (its own, else `DEFAULT_CHAT_TEMPLATE`) and a
  pad token. Training formats chat examples with `tok.apply_chat_template(messages)`; the server formats requests
  with `tok.apply_chat_template(messages, add_generation_prompt=True)`.
- The adapter artifact: peft's `save_pretrained` output plus `mf_model.json` (`ADAPTER_META`) =
  `{"task": "causal-lm", "kind": "lora-adapter", "base_model": <the base as the order named it>, "max_length": N}`.
"""

from __future__ import annotations

from typing import Any

TASK = "causal-lm"
ADAPTER_KIND = "lora-adapter"
ADAPTER_META = "mf_model.json"

# ChatML (the layout many open chat models use). A base without a chat template gets this one; `<|im_end|>` closes
# every turn, so a model trained on it learns to end its answer with it, and the server stops there.
CHAT_END = "<|im_end|>"
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_tokenizer(base: str) -> Any:
    """The tokenizer of `base` (a local model dir or a hub id, via `tasks.pretrained.resolve`), with a chat template
    (the base's own, else DEFAULT_CHAT_TEMPLATE) and a pad token (the base's, else its EOS token)."""
    from transformers import AutoTokenizer

    from .pretrained import resolve

    tok = AutoTokenizer.from_pretrained(resolve(base))
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok
