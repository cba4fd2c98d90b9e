"""The MNIST-1D task: small CNN/MLP training runs logged as RunRecords.

Used by ``tracker-sched demo`` and by the benchmarks (``benchmarks/mnist1d_task.py``
re-exports it). It needs the optional ``mnist1d`` package
(``pip install "tracker-sched[demo]"``); importing this module does not.

Data: ``mnist1d.data.make_dataset`` (generated locally, never downloaded) gives
4000 train + 1000 test sequences of length 40. The first 3500 train samples are
trained on, the last 500 are the validation set (every decision uses it), and
the 1000 test samples are for reporting only.

Step convention. ``lr_at(k)`` / ``lr_fn(k)`` is the learning rate used for the
optimizer step taken when ``k`` steps have already been done (``k = 0 ..
total_steps - 1``). A log point at ``step = s`` (steps done so far) records
``lr = lr_at(s - 1)``, the rate of the last step, and the mean of the batch
losses since the previous log point.

Randomness: the dataset is built once per process (``make_dataset`` seeds
numpy's global generator; its state is saved and restored around the call),
model init runs under ``torch.random.fork_rng`` and shuffling uses its own
``torch.Generator``, so a run leaks no global random state and the same seed
gives the same record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tracker_sched._optional import require
from tracker_sched.schema import RunRecord, Series

# Re-exported: the benchmarks and the demo read the schedules from this module too.
from tracker_sched.tasks.schedules import SCHEDULE_FNS as SCHEDULE_FNS
from tracker_sched.tasks.schedules import SCHEDULES as SCHEDULES
from tracker_sched.tasks.schedules import constant_lr as constant_lr
from tracker_sched.tasks.schedules import cosine_lr as cosine_lr
from tracker_sched.tasks.schedules import onecycle_lr as onecycle_lr
from tracker_sched.tasks.schedules import schedule_lr as schedule_lr
from tracker_sched.tasks.schedules import step_lr as step_lr

N_TRAIN = 3500
N_VAL = 500
SEQ_LEN = 40
N_CLASSES = 10
WEIGHT_DECAY = 1e-2
MODELS: tuple[str, ...] = ("cnn", "mlp")
DEFAULT_PEAKS: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

LrFn = Callable[[int], float]
Observer = Callable[[int, float, float, float], None]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor  # (3500, 40) float32
    y_train: torch.Tensor  # (3500,) int64
    x_val: torch.Tensor  # (500, 40)
    y_val: torch.Tensor
    x_test: torch.Tensor  # (1000, 40)
    y_test: torch.Tensor


# The process's splits: generated once (a few seconds) or handed over by a parent process.
_SPLITS: dict[str, Splits] = {}


def load_splits() -> Splits:
    """Generate MNIST-1D once per process and split it (train / val / test)."""
    splits = _SPLITS.get("mnist1d")
    if splits is None:
        splits = _SPLITS["mnist1d"] = _generate_splits()
    return splits


def use_splits(splits: Splits) -> None:
    """Adopt splits made by another process (e.g. in a pool initializer) instead of
    generating them again: workers then start seconds sooner and train on the same data."""
    _SPLITS["mnist1d"] = splits


def _generate_splits() -> Splits:
    data = require("mnist1d.data")
    get_dataset_args, make_dataset = data.get_dataset_args, data.make_dataset

    state = np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    x = torch.as_tensor(np.asarray(data["x"]), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(data["y"]), dtype=torch.int64)
    x_test = torch.as_tensor(np.asarray(data["x_test"]), dtype=torch.float32)
    y_test = torch.as_tensor(np.asarray(data["y_test"]), dtype=torch.int64)
    if x.shape != (N_TRAIN + N_VAL, SEQ_LEN) or x_test.shape[1] != SEQ_LEN:
        raise RuntimeError(f"unexpected MNIST-1D shapes {tuple(x.shape)}, {tuple(x_test.shape)}")
    return Splits(
        x_train=x[:N_TRAIN].contiguous(),
        y_train=y[:N_TRAIN].contiguous(),
        x_val=x[N_TRAIN:].contiguous(),
        y_val=y[N_TRAIN:].contiguous(),
        x_test=x_test.contiguous(),
        y_test=y_test.contiguous(),
    )


# ------------------------------------------------------------------------- models


class ConvNet(nn.Module):
    """The mnist1d reference 1D CNN; input (batch, 40) or (batch, 1, 40)."""

    def __init__(self, channels: int = 25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, SEQ_LEN)).shape[1]
        self.head = nn.Linear(n_flat, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        out: torch.Tensor = self.head(self.features(x))
        return out


class MLP(nn.Module):
    """40 -> 100 -> 100 -> 10 with ReLU."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(SEQ_LEN, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.reshape(x.shape[0], -1))
        return out


def build_model(model: str, seed: int) -> nn.Module:
    """The model, initialised from ``seed`` without touching the global torch RNG."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvNet() if model == "cnn" else MLP()


# ----------------------------------------------------------------------- training


@dataclass
class TrainResult:
    record: RunRecord
    final_val_acc: float
    final_test_acc: float
    wall_s: float


def steps_per_epoch(batch_size: int = 128, n_train: int = N_TRAIN) -> int:
    return math.ceil(n_train / batch_size)


def make_run_id(model: str, schedule: str, peak_lr: float, seed: int) -> str:
    """e.g. ``cnn-onecycle-3e-02-s0``."""
    return f"{model}-{schedule}-{peak_lr:.0e}-s{seed}"


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = net.training
    net.eval()
    try:
        pred = net(x).argmax(dim=1)
    finally:
        net.train(was_training)
    return int((pred == y).sum().item()) / len(y)


def train_run(
    model: str = "cnn",
    schedule: str = "onecycle",
    peak_lr: float = 3e-2,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 128,
    log_every: int = 3,
    lr_fn: LrFn | None = None,
    observer: Observer | None = None,
    *,
    sweep_id: str | None = None,
    run_id: str | None = None,
    optimizer: str = "adamw",
) -> TrainResult:
    """Train one model on MNIST-1D with AdamW and return its RunRecord and accuracies.

    ``lr_fn(k)``, when given, overrides the named schedule: it is called before
    every optimizer step with ``k`` = steps done so far. ``schedule`` is then only
    a label; a built-in schedule name is recorded as ``"custom"`` so that a
    driven run is never mistaken for a plain one (pass e.g. ``"advisor"``).

    ``observer(step, train_loss, val_acc, lr)`` is called at every log point
    (every ``log_every`` steps and at the last step), with the same values that
    go into the record.

    A non-finite batch loss ends the run: that batch counts as a step (its lr
    is logged), its update is not applied, the point is logged with loss NaN
    and the validation accuracy of the model as it stands, and the state is
    ``"crashed"``. Otherwise the state is ``"finished"``.

    ``optimizer="schedulefree"`` trains with ``schedulefree.AdamWScheduleFree`` at a
    constant ``peak_lr`` (its recommended use: no schedule, a 5% warm-up of its
    own, the same weight decay), switching it to its evaluation weights for every
    accuracy measurement.
    """
    if lr_fn is None and schedule not in SCHEDULE_FNS:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if epochs < 1 or batch_size < 1 or log_every < 1:
        raise ValueError("epochs, batch_size and log_every must be positive")
    data = load_splits()  # cached per process; not counted in wall_s
    t0 = time.perf_counter()
    n_batches = steps_per_epoch(batch_size, len(data.y_train))
    total_steps = epochs * n_batches
    label = schedule
    lr_at: LrFn
    if lr_fn is None:

        def named_lr(k: int) -> float:
            return schedule_lr(schedule, k, total_steps, peak_lr)

        lr_at = named_lr
    else:
        lr_at = lr_fn
        if schedule in SCHEDULE_FNS:
            label = "custom"

    net = build_model(model, seed)
    net.train()
    sf = optimizer == "schedulefree"
    opt: torch.optim.Optimizer
    if sf:
        opt = require("schedulefree").AdamWScheduleFree(
            net.parameters(), lr=float(peak_lr), weight_decay=WEIGHT_DECAY,
            warmup_steps=max(1, total_steps // 20),
        )
        opt.train()  # type: ignore[attr-defined]
        label = "schedulefree"

        def lr_at(k: int) -> float:
            return float(peak_lr)

    elif optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=float(lr_at(0)), weight_decay=WEIGHT_DECAY)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected adamw or schedulefree")

    def measure(x: torch.Tensor, y: torch.Tensor) -> float:
        if not sf:
            return accuracy(net, x, y)
        opt.eval()  # type: ignore[attr-defined]
        try:
            return accuracy(net, x, y)
        finally:
            opt.train()  # type: ignore[attr-defined]
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1_000_003 + seed)

    log_steps: list[int] = []
    losses: list[float] = []
    lrs: list[float] = []
    vals: list[float] = []

    def log_point(step: int, loss: float, lr: float) -> None:
        val = measure(data.x_val, data.y_val)
        log_steps.append(step)
        losses.append(loss)
        lrs.append(lr)
        vals.append(val)
        if observer is not None:
            observer(step, loss, val, lr)

    state = "finished"
    step = 0
    pending: list[float] = []
    for _epoch in range(epochs):
        perm = torch.randperm(len(data.y_train), generator=gen)
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            lr = float(lr_at(step))
            for group in opt.param_groups:
                group["lr"] = lr
            out = net(data.x_train[idx])
            loss = loss_fn(out, data.y_train[idx])
            loss_value = float(loss.item())
            step += 1
            if not math.isfinite(loss_value):
                log_point(step, math.nan, lr)
                state = "crashed"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pending.append(loss_value)
            if step % log_every == 0 or step == total_steps:
                log_point(step, sum(pending) / len(pending), lr)
                pending = []
        if state == "crashed":
            break

    final_test = measure(data.x_test, data.y_test)
    config: dict[str, object] = {
        "task": "mnist1d",
        "model": model,
        "schedule": label,
        "peak_lr": float(peak_lr),
        "seed": int(seed),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
    }
    rid = run_id or make_run_id(model, label, peak_lr, seed)
    record = RunRecord(
        run_id=rid,
        source="files",
        sweep_id=sweep_id if sweep_id is not None else f"mnist1d-{model}",
        name=rid,
        config=config,  # type: ignore[arg-type]
        state=state,
        total_steps=total_steps,
        train_loss=Series(step=list(log_steps), value=losses),
        lr=Series(step=list(log_steps), value=lrs),
        val_metric=Series(step=list(log_steps), value=vals),
        metric_keys={"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"},
    )
    return TrainResult(
        record=record,
        final_val_acc=vals[-1] if vals else math.nan,
        final_test_acc=final_test,
        wall_s=time.perf_counter() - t0,
    )
