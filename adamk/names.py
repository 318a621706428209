"""Names that come from a model file (weights, nodes, op types) are data, never code.

They may reach three places, each through one function here:
- error messages and the terminal: `quoted` / `printable` escape every character that is not
  printable (newlines, ANSI escapes, bidi controls) and cut very long names;
- comments in the generated CUDA: `c_comment` keeps a small ASCII alphabet and writes
  everything else as \\xNN, so no name can end a comment, splice a line or add a directive;
- internal IR names (activation buffers, tasks, counters): `label` keeps [A-Za-z0-9_.].
Identifiers in generated code never come from names at all: codegen numbers them.
"""
from __future__ import annotations

import string

TERMINAL_LIMIT = 120   # characters of a name shown in one error line
COMMENT_LIMIT = 64     # characters of a name shown in a kernel.cu comment
LABEL_LIMIT = 40       # characters of a model name kept in an internal IR name

_C_SAFE = frozenset(string.ascii_letters + string.digits + " _.,:;()[]{}<>=+-*/'@#$%&!|^~")
_LABEL_SAFE = frozenset(string.ascii_letters + string.digits + "_.")


def printable(text: str, limit: int | None = None) -> str:
    """`text` with non-printable characters escaped (\\n, \\x1b, \\u202e), cut to `limit`."""
    cut = limit is not None and len(text) > limit
    shown = text[:limit] if cut else text
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in shown)
    return out + (f"... ({len(text)} characters)" if cut else "")


def quoted(name: str) -> str:
    """A model name inside an error message: 'name', escaped and cut."""
    return f"'{printable(str(name), TERMINAL_LIMIT)}'"


def c_comment(name: str) -> str:
    """A model name inside a `//` comment of generated C++: "name" in a safe ASCII alphabet."""
    name = str(name)
    shown = name[:COMMENT_LIMIT]
    body = "".join(ch if ch in _C_SAFE else "".join(f"\\x{b:02x}" for b in ch.encode("utf-8")) for ch in shown)
    return f'"{body}"' + (f" (+{len(name) - COMMENT_LIMIT} chars)" if len(name) > COMMENT_LIMIT else "")


def label(name: str, fallback: str) -> str:
    """An internal IR name derived from a model name: [A-Za-z0-9_.] only, short, never empty."""
    kept = "".join(ch if ch in _LABEL_SAFE else "_" for ch in str(name)[:LABEL_LIMIT]).strip("._")
    return kept if kept and not kept[0].isdigit() else f"{fallback}_{kept}" if kept else fallback
