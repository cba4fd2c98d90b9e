"""The data that crosses the package's boundaries: runs in, recommendations out.

Every tracker adapter produces :class:`RunRecord` objects; everything after the
sources works on them. Structural checks (types, equal lengths) happen here at
construction; semantic checks on a whole sweep (non-increasing steps, bad lr,
divergence, duplicates) live in :mod:`tracker_sched.data.validation`, which records
a reason for every run it drops or truncates.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from tracker_sched.errors import InputError

Role = Literal["train_loss", "lr", "val_metric"]
ROLES: tuple[Role, ...] = ("train_loss", "lr", "val_metric")
Direction = Literal["max", "min"]
#: Which way the encoder reads the context window (a model setting; here so that it is torch-free).
EncoderDirection = Literal["backward", "forward"]


class Series(BaseModel):
    """One metric as logged: values at their own steps (trackers log at different rates)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    step: list[int]
    value: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Series:
        if len(self.step) != len(self.value):
            raise ValueError(
                f"step and value must have the same length, got {len(self.step)} steps "
                f"and {len(self.value)} values"
            )
        return self

    def __len__(self) -> int:
        return len(self.step)


class RunRecord(BaseModel):
    """One training run of a sweep, with its metrics mapped to roles.

    ``total_steps`` is the planned budget the run states (the sweep file's field,
    or what :func:`tracker_sched.budget.stated_budget` finds in the config);
    ``budget_source`` says where it came from. Where a run states none,
    validation resolves it (:mod:`tracker_sched.budget`). Progress is
    ``tau = step / total_steps``.

    Attributes:
        run_id: the tracker's id of the run.
        source: the tracker it was read from.
        sweep_id: the sweep (W&B sweep, MLflow parent run) it belongs to.
        name: the run's display name.
        config: its hyperparameters, as logged (JSON values).
        state: ``finished``, ``running``, ``failed``, ``killed`` or ``crashed``.
        total_steps: the planned budget in steps, if the run states one.
        budget_source: where ``total_steps`` came from.
        train_loss: the training loss over steps, if logged.
        lr: the learning rate over steps, if logged.
        val_metric: the validation metric over steps, if logged.
        metric_keys: role -> the tracker key each series came from.

    Raises:
        pydantic.ValidationError: a field is out of range (an empty ``run_id``, a
            non-positive ``total_steps``, a series whose steps do not rise).
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    run_id: str = Field(min_length=1)
    source: Literal["wandb", "mlflow", "files"] = "files"
    sweep_id: str | None = None
    name: str | None = None
    config: dict[str, JsonValue] = Field(default_factory=dict)
    state: str = "finished"
    total_steps: int | None = Field(default=None, gt=0)
    budget_source: str | None = Field(default=None, description="where total_steps came from")
    train_loss: Series | None = None
    lr: Series | None = None
    val_metric: Series | None = None
    metric_keys: dict[str, str] = Field(
        default_factory=dict, description="role -> tracker key the series came from"
    )

    def series(self, role: Role) -> Series | None:
        return {"train_loss": self.train_loss, "lr": self.lr, "val_metric": self.val_metric}[role]


_DEFAULT_CANDIDATES: dict[Role, tuple[str, ...]] = {
    # Order matters: the first candidate present in a run wins.
    "lr": (
        "lr",
        "learning_rate",
        "train/learning_rate",
        "train/lr",
        "trainer/learning_rate",
        "lr-*",  # Lightning's LearningRateMonitor: lr-AdamW, lr-SGD, ...
        "lr/*",
        "lr_*",
    ),
    "train_loss": (
        "train_loss",
        "train/loss",
        "loss",
        "training_loss",
        "train/train_loss",
        "loss/train",
    ),
    "val_metric": (
        "val_acc",
        "val/acc",
        "val_accuracy",
        "val/accuracy",
        "valid_acc",
        "eval_accuracy",
        "eval/accuracy",
        "accuracy/val",
        "val_loss",
        "val/loss",
        "valid_loss",
        "eval_loss",
        "eval/loss",
        "loss/val",
    ),
}

_NOT_LR = re.compile(r"momentum|beta|decay", re.IGNORECASE)
_MIN_WORDS = re.compile(r"loss|perplexity|ppl|error|err\b|mse|mae|rmse|nll", re.IGNORECASE)
_MAX_WORDS = re.compile(r"acc|f1|auc|precision|recall|bleu|rouge|score|map\b", re.IGNORECASE)


def infer_direction(key: str) -> Direction | None:
    """Guess whether a validation metric is maximised or minimised from its name."""
    if _MAX_WORDS.search(key):
        return "max"
    if _MIN_WORDS.search(key):
        return "min"
    return None


class MetricMap(BaseModel):
    """Which tracker keys play which role, and whether the validation metric is maximised.

    An explicit key wins; otherwise the first of the role's candidates that a run
    logged (glob patterns such as ``lr-*`` allowed). ``val_direction=None``
    infers it from the key's name (``acc`` -> max, ``loss`` -> min).

    >>> MetricMap().resolve(["loss", "learning_rate", "eval_accuracy"])["lr"]
    'learning_rate'

    Attributes:
        train_loss: the key of the training loss (None: the first candidate logged).
        lr: the key of the learning rate.
        val_metric: the key of the validation metric.
        val_direction: ``"max"`` or ``"min"``; None infers it from the key.
        candidates: role -> the keys (globs) tried in order when none is given.

    Raises:
        pydantic.ValidationError: an unknown direction or role.
    """

    model_config = ConfigDict(frozen=True)

    train_loss: str | None = None
    lr: str | None = None
    val_metric: str | None = None
    val_direction: Direction | None = None
    candidates: dict[Role, tuple[str, ...]] = Field(
        default_factory=lambda: dict(_DEFAULT_CANDIDATES)
    )

    def _explicit(self, role: Role) -> str | None:
        return {"train_loss": self.train_loss, "lr": self.lr, "val_metric": self.val_metric}[role]

    def key_for(
        self, role: Role, keys: Iterable[str], lengths: Mapping[str, int] | None = None
    ) -> str | None:
        """The key that plays ``role`` among ``keys``, or None.

        With ``lengths`` (points per key), a default candidate logged at a single
        point is passed over while another candidate has a series: HF Trainer
        logs a one-point ``train_loss`` summary at the end beside its ``loss``
        series. A glob match for the lr that names a momentum, beta or decay
        (``lr-SGD-momentum``, from Lightning's LearningRateMonitor) is no lr.
        """
        available = list(keys)
        explicit = self._explicit(role)
        if explicit is not None:
            return explicit if explicit in available else None
        found: list[str] = []
        for pattern in self.candidates.get(role, ()):
            if any(ch in pattern for ch in "*?["):
                matches = sorted(k for k in available if fnmatch.fnmatchcase(k, pattern)
                                 and not (role == "lr" and _NOT_LR.search(k)))
                found += matches[:1]
            elif pattern in available:
                found.append(pattern)
        if lengths is not None:
            series = [k for k in found if lengths.get(k, 0) > 1]
            if series:
                return series[0]
        return found[0] if found else None

    def resolve(
        self, keys: Iterable[str], *, strict: bool = False,
        lengths: Mapping[str, int] | None = None,
    ) -> dict[Role, str | None]:
        """Map every role to a key among ``keys`` (``lengths``: see :meth:`key_for`).

        With ``strict=True`` a missing role raises :class:`InputError` naming the
        keys that were seen and the flag that sets the key by hand.
        """
        available = sorted(set(keys))
        out: dict[Role, str | None] = {
            role: self.key_for(role, available, lengths) for role in ROLES}
        if strict:
            missing = [role for role, key in out.items() if key is None]
            if missing:
                raise InputError(missing_roles_message(missing, available, self))
        return out

    def direction_for(self, key: str) -> Direction:
        """The validation metric's direction: explicit, else inferred from ``key``."""
        if self.val_direction is not None:
            return self.val_direction
        inferred = infer_direction(key)
        if inferred is None:
            raise InputError(
                f"cannot tell whether validation metric {key!r} is maximised or minimised; "
                "pass --val-direction max|min (MetricMap(val_direction=...))"
            )
        return inferred


def missing_roles_message(missing: list[Role], available: list[str], mm: MetricMap) -> str:
    flags = {"train_loss": "--train-loss-key", "lr": "--lr-key", "val_metric": "--val-key"}
    parts = []
    for role in missing:
        explicit = mm._explicit(role)
        wanted = repr(explicit) if explicit else "one of " + ", ".join(mm.candidates.get(role, ()))
        parts.append(f"no {role} metric ({wanted}); set it with {flags[role]}")
    seen = ", ".join(available) if available else "none"
    return "; ".join(parts) + f". Keys seen: {seen}"


class Schedule(BaseModel):
    """Learning rates at future steps."""

    model_config = ConfigDict(frozen=True)

    step: list[int]
    lr: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Schedule:
        if len(self.step) != len(self.lr):
            raise ValueError("schedule step and lr must have the same length")
        if any(not (math.isfinite(x) and x > 0) for x in self.lr):
            raise ValueError("schedule lr values must be positive and finite")
        return self


class Recommendation(BaseModel):
    """What the advisor tells a live run. A fallback has the same shape as a plan.

    Attributes:
        status: ``warmup`` (following the sweep's best run until a full window exists),
            ``planned`` (a plan from the model) or ``fallback`` (the current plan kept).
        reason: why, in words (a fallback's cause, a plan's predicted gain).
        step: the step it was made at.
        lr_now: the lr to use at ``step``.
        schedule: the whole plan: steps and lrs to the end of the budget (log-linear
            between points).
        predicted_final: the predicted final validation metric (a plan only).
        predicted_spread: the ensemble's spread of that prediction.
        samples_accepted: candidate futures the planner accepted.
        samples_drawn: candidate futures it drew.
        model_version: the bundle's ``created_at``.
        mode: the planner that made it: ``generative``, ``control`` or ``best`` (the
            sweep's best configuration's schedule); None from a server before 0.3.

    Raises:
        pydantic.ValidationError: a non-positive or non-finite ``lr_now``, an unknown status.
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["planned", "warmup", "fallback"]
    reason: str = ""
    step: int
    lr_now: float = Field(gt=0, allow_inf_nan=False)
    schedule: Schedule
    predicted_final: float | None = None
    predicted_spread: float | None = None
    samples_accepted: int = 0
    samples_drawn: int = 0
    model_version: str | None = None
    mode: Literal["generative", "control", "best"] | None = None


class RunIssue(BaseModel):
    """A run that validation excluded or changed, and why. Listed in every fit report.

    ``partial``: the run is kept as evidence of dynamics but cannot be the sweep's
    best (it did not finish, or did not reach the end of its budget).
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    action: Literal["excluded", "truncated", "repaired", "partial"]
    reason: str
