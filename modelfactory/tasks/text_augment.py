"""Transfer-set augmentation for distilling a text teacher into small students (Tang et al. 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks", section 3.3).

Each new text is a training text with, word by word, a chance of being masked (the student sees an unknown
word, the teacher its mask token) or replaced by a word drawn from the corpus's own unigram distribution (the
paper's POS-guided replacement, without a tagger), then a chance of keeping only a random n-gram of it. The
teacher labels these texts; nothing claims they keep the original label, which is why they carry none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

MASK = "[MASK]"
_WORD = re.compile(r"\S+")


def augment_texts(texts: Sequence[str], copies: int, seed: int, *, p_mask: float = 0.1, p_replace: float = 0.1,
                  p_ngram: float = 0.25, max_ngram: int = 5) -> list[str]:
    """`copies` perturbed versions of every text (same seed and texts: the same output), de-duplicated against
    the originals and each other."""
    rng = np.random.default_rng(seed)
    tokenized = [_WORD.findall(t) for t in texts]
    counts = Counter(w for words in tokenized for w in words)
    vocab = list(counts)
    cdf = np.cumsum(np.asarray([counts[w] for w in vocab], dtype=np.float64))
    cdf /= cdf[-1] if len(cdf) else 1.0
    seen = set(texts)
    out: list[str] = []
    for words in tokenized:
        if not words:
            continue
        for _ in range(copies):
            draw = rng.random(len(words))
            new = []
            for w, r in zip(words, draw):
                if r < p_mask:
                    new.append(MASK)
                elif r < p_mask + p_replace:
                    new.append(vocab[min(int(np.searchsorted(cdf, rng.random())), len(vocab) - 1)])
                else:
                    new.append(w)
            if rng.random() < p_ngram and len(new) > 1:
                n = int(rng.integers(1, min(max_ngram, len(new)) + 1))
                start = int(rng.integers(0, len(new) - n + 1))
                new = new[start:start + n]
            text = " ".join(new)
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out
