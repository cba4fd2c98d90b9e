r"""Text for a terminal: what a tracker says (run ids, names, reasons) cannot drive it.

A run id is whatever the person or program that logged it chose. Printed raw, an escape
sequence in it can clear the screen, recolour or rewrite earlier lines, or set the window
title, and a right-to-left override can make ``txt\u202egpj.exe`` read as ``txtexe.jpg``.
Every line the CLI prints goes through :func:`escape`, which shows such characters as Python
escapes (``\x1b``, ``\u202e``) instead of sending them.
"""

from __future__ import annotations

import logging
import re

# C0 and C1 controls and DEL; bidi embeddings, overrides, isolates and marks; zero-width and
# line/paragraph separators. Tab and newline are kept in multi-line text (``lines=True``).
_FORMATTING = "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_FIELD = re.compile(f"[\x00-\x1f\x7f-\x9f{_FORMATTING}]")
_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_FORMATTING}]")


def _show(match: re.Match[str]) -> str:
    c = match.group()
    code = ord(c)
    if c == "\n":
        return "\\n"
    if c == "\r":
        return "\\r"
    if c == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object, *, lines: bool = False) -> str:
    """``text`` with every control, bidi and invisible formatting character escaped.

    ``lines=True`` keeps newlines and tabs (a block the CLI composed itself); the default
    escapes them too (one field, e.g. a run id, that must stay on its line).
    """
    pattern = _LINES if lines else _FIELD
    return pattern.sub(_show, str(text))


class EscapingFilter(logging.Filter):
    """A handler filter: log lines (warnings quote run names and server reasons) escaped too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = escape(record.getMessage(), lines=True), None
        return True
