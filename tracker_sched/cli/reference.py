"""The CLI reference, generated from the parser itself (the docs site builds it, so the
page can never drift from ``tracker-sched --help``).

>>> # print(cli_reference())   # markdown: one section per command
"""

from __future__ import annotations

import argparse
import os


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def cli_reference() -> str:
    """Markdown for every ``tracker-sched`` command: its one-line summary and its ``--help``.

    Returns:
        The reference as markdown (a table of commands, then one section each).
    """
    from tracker_sched.cli import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal's width
    try:
        parser = build_parser()
        commands = _subcommands(parser)
        lines = ["| command | what it does |", "|---|---|"]
        lines += [f"| [`{name}`](#{name}) | {text} |" for name, text, _ in commands]
        lines += ["", "```text", parser.format_help().rstrip(), "```", ""]
        for name, text, sub in commands:
            lines += [f"## {name}", "", text[:1].upper() + text[1:] + ".", "", "```text",
                      sub.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before
