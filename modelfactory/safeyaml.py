"""YAML from users (order specs from a file or a request body): plain data only, bounded before anything is built.

Anchors and aliases (`&a`, `*a`, and the `<<` merge keys built on them) are refused: a few hundred bytes of
nested aliases expand to gigabytes once loaded (the "billion laughs"), and an order spec never needs them. The
check runs on the parser's events, before the composer builds a single node, so a refused document costs no more
than its size. Nesting is bounded too (a deep document would otherwise end in a RecursionError), and so is the
size of the text itself."""

from __future__ import annotations

import yaml

MAX_DEPTH = 64  # an order spec nests 4-5 levels; the bound only has to stop a recursion crash
MAX_BYTES = 1 << 20


class RefusedYAML(yaml.YAMLError):
    """A YAML document refused before it was built (aliases, depth, size); one line a person can act on."""


def _where(event) -> str:
    mark = getattr(event, "start_mark", None)
    return f"line {mark.line + 1}: " if mark is not None else ""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and deep nesting while composing (nothing expanded yet)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RefusedYAML(f"{_where(event)}YAML anchors and aliases ('&name', '*name', '<<') are not accepted; "
                              "write the values out")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RefusedYAML(f"{_where(event)}nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load(text: str | bytes, max_bytes: int = MAX_BYTES):
    """One YAML document as plain Python data (dict, list, str, numbers, ...); RefusedYAML or another
    yaml.YAMLError when it is not one. JSON is YAML, so this reads JSON specs too."""
    if len(text) > max_bytes:
        raise RefusedYAML(f"larger than {max_bytes} bytes")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except (ValueError, TypeError, OverflowError) as e:  # a scalar its constructor refuses (a 5,000-digit int, a
        raise RefusedYAML(f"a value cannot be read: {str(e).splitlines()[0][:120]}") from None  # 13th month, ...)
    finally:
        loader.dispose()
