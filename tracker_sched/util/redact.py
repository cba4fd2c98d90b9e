"""Secrets out of everything tracker-sched stores or logs: the one redaction rule.

Run configs come from trackers verbatim, and people put tokens in them (``hf_token``,
``wandb_api_key``); server URLs carry credentials (``https://user:token@host``). What a
bundle stores (``bundle.json``, and so the registered MLflow model and the W&B artifact) and
what the advisors log or tag goes through this module first.

The rule:

- A config key is secret when one of its parts (split at ``_ - . / space`` and camelCase)
  ends in ``token``, ``key``, ``secret``/``secrets``, ``password``, ``passwd``, ``pwd``,
  ``passphrase``, ``credential``/``credentials`` or ``cookie``, or starts with ``auth``. Its
  value is replaced by ``"[redacted]"`` unless it is a number, a boolean or null (a secret is
  text; ``use_auth_token: true`` and ``num_key_value_heads: 8`` are settings).
- In any text (a config value, a reason, a log line), a URL's ``user:password@`` becomes
  ``***@``, and a query parameter whose name holds one of those words keeps its name only
  (``?token=***``).

The keys that were redacted are listed (names only, never values) in the bundle's
``redacted`` field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

_PART_ENDS = ("token", "key", "secret", "secrets", "password", "passwd", "pwd", "passphrase",
              "credential", "credentials", "cookie")
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")
_URL_USER = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#]+@")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][^=&\s#]*(?:token|key|secret|passw|pwd|auth|credential|signature|sig)"
    r"[^=&\s#]*=)[^&\s#]+", flags=re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret (see the module docstring for the rule)."""
    for part in _PARTS.findall(key):
        p = part.lower()
        if p.endswith(_PART_ENDS) or p.startswith("auth"):
            return True
    return False


def redact_text(text: str) -> str:
    """``text`` with URL credentials and secret query parameters masked."""
    text = _URL_USER.sub(lambda m: m.group("scheme") + "***@", text)
    return _QUERY_SECRET.sub(lambda m: m.group("name") + "***", text)


def redact_url(url: str) -> str:
    """A URL as it may be shown: no ``user:password@``, no secret query parameter."""
    return redact_text(url)


def redact_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``config`` with secrets replaced, and the (dotted) keys replaced, sorted.

    Nested dicts and lists are walked; the caller's objects are not changed.
    """
    names: set[str] = set()

    def walk(value: Any, path: str, secret: bool) -> Any:
        if isinstance(value, Mapping):
            if secret:
                names.add(path)
                return REDACTED
            return {str(k): walk(v, f"{path}.{k}" if path else str(k), is_secret_key(str(k)))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if secret and value:
                names.add(path)
                return REDACTED
            return [walk(v, path, False) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if secret:
            names.add(path)
            return REDACTED
        if isinstance(value, str):
            clean = redact_text(value)
            if clean != value:
                names.add(path)
            return clean
        return value

    out = walk(config, "", False)
    assert isinstance(out, dict)
    return out, sorted(names)
