"""Which configuration a run belongs to. The one rule for the whole package.

A sweep's best is a *configuration* (its hyperparameters), judged by the mean
of its seeds, so every per-configuration rule (the sweep's best, the seed-spread
floor, the control checks, the bases of suggested runs) needs to know which
runs are the same configuration. Trackers store far more than hyperparameters
in a run's config: a seed, their own bookkeeping (W&B's ``_wandb``: entity,
project, exit code and the run's whole summary), and per-run identity (HF
Trainer's ``output_dir`` and ``run_name``, timestamps). Any of these left in
makes every run its own configuration, and the "best configuration" is then
the luckiest single seed.

The rule. Nested configs are flattened to dotted names (``optimizer.lr``);
a key is left out of the configuration when:

1. **it is a seed:** its last name part contains ``seed`` (``seed``,
   ``data_seed``, ``trainer.seed_everything``);
2. **it is the tracker's own:** its name starts with ``_`` (``_wandb``,
   ``_keys_seen``, HF's ``_name_or_path``);
3. **it names the run:** its last name part is one of :data:`IDENTITY_NAMES`
   (``run_name``, ``output_dir``, ``logging_dir``, ``timestamp``, ...);
4. **its values are per-run labels:** in every run that has it, its value is
   text that looks like a filesystem path or URI (``/``, ``./``, ``~``,
   ``s3://``...), a timestamp (``2025-05-01``, ``20250501-120000``,
   ``May01_12-00-00``) or a long hex id, *and* no two runs share a value;
5. **the user said so:** ``--ignore-config-key KEY`` (glob patterns allowed).

A number is never a per-run label: a random-search learning rate that differs
in every run stays a hyperparameter, and so does text that is not path-,
time- or id-like (``model: "resnet18"``). A key that has the same value in
every run does not change which runs group together, whichever rule it meets.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Key names (last name part, any case) that identify a run, not its training.
IDENTITY_NAMES: frozenset[str] = frozenset({
    "run_name", "run_id", "run_dir", "output_dir", "logging_dir", "log_dir", "save_dir",
    "checkpoint_dir", "default_root_dir", "dirpath", "hub_model_id", "wandb_run_id",
    "mlflow_run_id", "timestamp", "start_time", "datetime", "hostname",
})

_PATH = re.compile(r"^(/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\]|[A-Za-z][A-Za-z0-9+.-]*://|file:)")
_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}"  # ISO date
    r"|\d{8}[-_T]?\d{4,6}"  # 20250501-120000
    r"|[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}"  # tensorboard / HF runs/May01_12-00-00
    r"|\d{2}:\d{2}:\d{2}"
)
_HEX_ID = re.compile(r"^[0-9a-fA-F-]{16,}$")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; other values (lists too) as they are."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _last_part(key: str) -> str:
    return re.split(r"[./]", key)[-1].lower()


def is_seed_key(key: str) -> bool:
    return "seed" in _last_part(key)


def _is_label(value: Any) -> bool:
    return isinstance(value, str) and bool(
        _PATH.match(value) or _TIME.search(value) or _HEX_ID.match(value))


def _why_dropped(key: str, values: list[Any], ignore: Sequence[str]) -> str | None:
    """Which rule leaves ``key`` out of the configuration (None: it is a hyperparameter)."""
    if is_seed_key(key):
        return "seed"
    if key.startswith("_") or key.split(".")[0].startswith("_"):
        return "tracker-internal"
    if _last_part(key) in IDENTITY_NAMES:
        return "run identity (name)"
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
        return "--ignore-config-key"
    if (len(values) >= 2 and all(_is_label(v) for v in values)
            and len(set(values)) == len(values)):
        return "run identity (a path, time or id that differs in every run)"
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Configurations:
    """The configuration of every run of a sweep, and what was left out of it.

    ``ids[i]`` is run ``i``'s configuration id: equal ids, same configuration.
    """

    ids: tuple[str, ...]
    hyperparameters: tuple[str, ...]  # keys whose values differ between configurations
    seed_keys: tuple[str, ...]  # seed keys that differ between runs
    dropped: dict[str, str] = field(default_factory=dict)  # varying key -> rule that dropped it

    def count(self, subset: Sequence[int] | None = None) -> int:
        """Number of distinct configurations (among the runs at ``subset``)."""
        ids = self.ids if subset is None else [self.ids[i] for i in subset]
        return len(set(ids))

    def describe(self, subset: Sequence[int] | None = None) -> str:
        """``"16 configurations x 2 seeds"`` (or ``"x 1-3 seeds"``) for the runs at ``subset``."""
        ids = list(self.ids) if subset is None else [self.ids[i] for i in subset]
        if not ids:
            return "0 configurations"
        per = Counter(ids).values()
        lo, hi = min(per), max(per)
        seeds = f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"
        n = len(per)
        return f"{n} configuration{'s' if n != 1 else ''} x {seeds}"

    def hyperparameters_of(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The keys of ``config`` that tell configurations apart, with their values."""
        flat = flatten(config)
        return {k: flat.get(k) for k in self.hyperparameters}


def configurations(
    configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()
) -> Configurations:
    """Apply the module's rule to a sweep's configs (one per run, in run order)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    dropped: dict[str, str] = {}
    kept: list[str] = []
    seeds: list[str] = []
    for key in keys:
        values = [f[key] for f in flats if key in f]
        varies = len({_canonical(v) for v in values}) > 1 or len(values) < len(flats)
        why = _why_dropped(key, values, ignore)
        if why is None:
            kept.append(key)
        elif varies:
            dropped[key] = why
            if why == "seed":
                seeds.append(key)
    ids = tuple(_canonical({k: f[k] for k in kept if k in f}) for f in flats)
    varying = tuple(k for k in kept if len({_canonical(f.get(k)) for f in flats}) > 1
                    or any(k not in f for f in flats))
    return Configurations(ids=ids, hyperparameters=varying, seed_keys=tuple(seeds),
                          dropped=dropped)


def config_id(config: Mapping[str, Any], ignore: Sequence[str] = ()) -> str:
    """One config's id under the name rules alone (1, 2, 3, 5): for a config seen
    without its sweep, such as a bundle's stored top runs from older versions."""
    flat = flatten(config)
    return _canonical({k: v for k, v in flat.items() if _why_dropped(k, [v], ignore) is None})
