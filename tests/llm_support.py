"""Shared pieces of the generation-server tests (no tests here): tiny random causal LMs with a real tokenizer, and
LoRA adapters made and registered the way the factory's fine-tuning stage does.

- `lm_tokenizer_dir`: a byte-level BPE tokenizer (vocab 1,024) trained in seconds with `tokenizers` on the demo
  corpus, saved as a `PreTrainedTokenizerFast` (so `from_pretrained` takes the real path); no chat template, so
  the server uses lm_common's default (ChatML) one.
- `tiny_llama`, `tiny_gpt2`: random-initialised model dirs (`save_pretrained`) with that tokenizer.
- `make_adapter`: a peft LoRA with random (non-zero) weights on a base, saved with `save_pretrained` plus
  `mf_model.json`; `register_adapter` registers it as a `causal-lm` registry version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelfactory import registry
from modelfactory.artifacts import ArtifactStore, content_hash
from modelfactory.tasks.lm_common import ADAPTER_KIND, ADAPTER_META, TASK

# a little text beyond the corpus so multi-byte characters get their own merges
EXTRA_TEXT = ["héllo wörld, café crème ✓ naïve — “quotes” 日本語のテキスト 😀🎬 ümlaut ß"] * 20


@pytest.fixture(scope="session")
def lm_tokenizer_dir(corpus_df, tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_df["text"].head(600).tolist() + EXTRA_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    out = tmp_path_factory.mktemp("lm-tokenizer")
    fast.save_pretrained(out)
    return out


def _save_model(model, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_llama(lm_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Llama (grouped-query attention, context 256), random weights (wide init, so greedy
    answers vary from token to token instead of repeating one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(lm_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _save_model(LlamaForCausalLM(cfg), lm_tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(lm_tokenizer_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(lm_tokenizer_dir)
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _save_model(GPT2LMHeadModel(cfg), lm_tokenizer_dir, tmp_path_factory.mktemp("tiny-gpt2"))


def lora_targets(base_dir: Path) -> list[str]:
    cfg = json.loads((base_dir / "config.json").read_text())
    return ["c_attn", "c_proj"] if cfg["model_type"] == "gpt2" else ["q_proj", "v_proj", "o_proj"]


def make_adapter(base_dir: Path, out: Path, seed: int, *, base_model: str | None = None, r: int = 4,
                 max_length: int = 128):
    """A LoRA on `base_dir` with random weights from `seed` (init_lora_weights=False: B is not zero, so the
    adapter changes the output), saved to `out` as the fine-tuning stage saves one. Returns the PeftModel."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    gpt2 = lora_targets(base_dir)[0] == "c_attn"
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=lora_targets(base_dir),
                                            init_lora_weights=False, fan_in_fan_out=gpt2, task_type="CAUSAL_LM"))
    model.eval()
    model.save_pretrained(out)
    (out / ADAPTER_META).write_text(json.dumps({"task": TASK, "kind": ADAPTER_KIND,
                                                "base_model": base_model or str(base_dir),
                                                "max_length": max_length}))
    return model


def register_adapter(name: str, adapter_dir: Path, *, tenant: str = "acme", aliases: tuple[str, ...] = (),
                     task: str = TASK) -> registry.ModelRef:
    """Register `adapter_dir` as a new artifact and registry version (in the current MF_HOME)."""
    store = ArtifactStore()
    artifact_id = content_hash({"llm-test-adapter": str(adapter_dir), "name": name})
    if not store.exists(artifact_id):
        with store.create(artifact_id, kind="model", producer="test") as (tmp, _):
            shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
    return registry.register(name=name, tenant=tenant, task=task, artifact_id=artifact_id, metrics={},
                             lineage={}, card_fn=lambda n, v: "", aliases=aliases)


@pytest.fixture(scope="session")
def llama_adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Four adapters on tiny_llama with different random weights (names: a0..a3)."""
    root = tmp_path_factory.mktemp("llama-adapters")
    out = {}
    for i in range(4):
        make_adapter(tiny_llama, root / f"a{i}", seed=100 + i)
        out[f"a{i}"] = root / f"a{i}"
    return out
