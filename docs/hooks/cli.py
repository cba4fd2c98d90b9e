"""MkDocs hook: the CLI reference page is generated from ``tracker-sched``'s own parser."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from tracker_sched.cli.reference import cli_reference

    return markdown.replace(MARKER, cli_reference())
