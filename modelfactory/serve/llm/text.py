"""The text side of generation: token ids to stable text pieces, and where a stop string ends the answer."""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """Text from a growing list of token ids, one stable piece at a time.

    A token may end in the middle of a multi-byte character (byte-level BPE), and some tokenizers only know whether
    a piece starts with a space from the token before it (SentencePiece), so each step decodes a short window of
    ids and hands out only the part that is new and not a dangling partial character (U+FFFD at its end); the rest
    waits for the next token. `flush` gives whatever is left when the sequence ends.
    """

    def __init__(self, tokenizer: Any, context: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(context[-5:])  # a few prompt ids give the first generated piece its leading space right
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def step(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""


def find_stop(text: str, emitted: int, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string in `text` begins, or None; only occurrences that end past the `emitted`
    characters are looked for (the text before them was checked when it was handed out)."""
    if not stops:
        return None
    search_from = max(0, emitted - max(len(x) for x in stops) + 1)
    hits = [i for i in (text.find(x, search_from) for x in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` may be the start of a stop string (not to be handed out yet)."""
    return max((k for x in stops for k in range(1, len(x)) if text.endswith(x[:k])), default=0)
