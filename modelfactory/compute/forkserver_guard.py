"""Imported first by a worker's multiprocessing forkserver (worker.preload()), and for nothing else: it binds the
forkserver to the worker that started it (PR_SET_PDEATHSIG), so a worker killed with `kill -9` does not leave it
behind.

Why: the forkserver exits by itself once the worker is gone, but only from its main loop, which it reaches after
importing its preload list (torch, onnxruntime, transformers: a minute or more on a loaded machine). A worker
killed during that time (chaos: a server restart kills its workers, which may themselves have just started) left
the forkserver running on alone, importing for nobody, until bench/chaos.py counted it as an orphan.
"""

from __future__ import annotations

import sys

if "multiprocessing.forkserver" in sys.modules and sys.argv[:1] == ["-c"]:  # only inside a forkserver process
    from .pool import die_with_parent

    die_with_parent()
