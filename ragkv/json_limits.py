"""How deep a JSON text nests, measured without parsing it.

Python's `json` recurses once per level of arrays and objects and raises RecursionError
somewhere under 1,000 levels (fewer when the caller is already deep in a call stack, as a
request handler is), so nesting is bounded before anything parses a client's JSON.
"""

from __future__ import annotations

import re

MAX_JSON_DEPTH = 64  # arrays/objects inside each other; tool schemas and metadata need far fewer

# A string (skipped whole, escapes included) or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def nests_deeper_than(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `raw` nests arrays and objects more than `limit` levels deep.

    Strings are skipped, so brackets inside them do not count. On text that is not JSON the
    answer is only a guess; the parser refuses such text anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:  # too few brackets: no scan needed
        return False
    depth = 0
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False
