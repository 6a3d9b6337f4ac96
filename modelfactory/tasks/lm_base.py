"""Small causal-LM bases built here, for when no pretrained one can be had (no model hub on these machines): a
byte-level BPE tokenizer trained on the given text, a Llama-style model of a chosen size, and optionally a short
pretraining run on the same text. Saved as an ordinary Hugging Face model dir, so everything downstream loads it
with `from_pretrained` exactly like a downloaded model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

SIZES = {  # hidden, layers, heads, intermediate
    "tiny": (64, 2, 4, 128),
    "small": (256, 4, 8, 688),
    "base": (384, 6, 6, 1024),
}
SPECIAL = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer (the GPT-2 kind: any text encodes, nothing is unknown) fitted to `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .lm_common import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def build_base(texts: Sequence[str], out_dir: Path, *, size: str = "tiny", vocab_size: int = 2000,
               context: int = 256, seed: int = 0):
    """Tokenizer + randomly initialised Llama of `size`, saved to `out_dir`; returns (tokenizer, model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter = SIZES[size]
    tokenizer = train_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=inter,
                         max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer, model


def pretrain(texts: Sequence[str], out_dir: Path, *, size: str = "small", steps: int = 300, batch_size: int = 16,
             block: int = 128, lr: float = 3e-3, seed: int = 0,
             progress: Callable[[int, int, float], None] = lambda step, total, loss: None) -> dict[str, float]:
    """Build a base and pretrain it for `steps` of next-token prediction on `texts` (packed into blocks of
    `block` tokens); save it to `out_dir`. Returns the first and last training loss."""
    tokenizer, model = build_base(texts, out_dir, size=size, context=max(block, 256), seed=seed)
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)
                                              * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    first = last = float("nan")
    for step in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        last = loss.item()
        first = last if step == 0 else first
        progress(step + 1, steps, last)
    model.eval()
    model.save_pretrained(out_dir)
    return {"first_loss": first, "last_loss": last, "tokens": int(data.numel()),
            "parameters": sum(p.numel() for p in model.parameters())}
