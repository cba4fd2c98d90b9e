"""The CLI reference page is generated from the parser: every command and option is on it."""

from __future__ import annotations

import argparse

from tracker_sched.cli import build_parser
from tracker_sched.cli.reference import cli_reference


def test_every_command_and_option_is_in_the_reference() -> None:
    text = cli_reference()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sub.choices
    for name, command in sub.choices.items():
        assert f"\n## {name}\n" in text
        assert f"usage: tracker-sched {name}" in text
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in text, f"{name} {flag}"


def test_the_fit_help_names_the_budget_keys_the_budget_rule_reads() -> None:
    from tracker_sched.budget import EPOCH_KEYS, STEP_KEYS

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = " ".join(sub.choices["fit"].format_help().split())  # argparse wraps the help
    assert f"default: {', '.join(STEP_KEYS)}, then epoch counts ({', '.join(EPOCH_KEYS)})" in text
