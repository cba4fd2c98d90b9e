"""AdvisorLR, the PyTorch LRScheduler over an advisor, in a real training loop."""

from __future__ import annotations

import pytest
import torch

from tracker_sched.advising.advisor import Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.integrations.pytorch.scheduler import AdvisorLR
from tracker_sched.schema import RunRecord


@pytest.fixture(scope="module")
def runs(fixture_runs: list[RunRecord]) -> list[RunRecord]:
    return fixture_runs


@pytest.fixture(scope="module")
def bundle(planner_bundle: Bundle) -> Bundle:
    return planner_bundle


def test_lr_scheduler_in_a_real_training_loop(bundle: Bundle) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": model[2].parameters(), "lr": 0.05},  # half the first group's lr
    ])
    total = 60
    adv = Advisor(bundle, total_steps=total, replan_every=3)
    sched = AdvisorLR(opt, adv)
    losses = []
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(adv.lr(step), rel=1e-9)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * adv.lr(step), rel=1e-9)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
        if step % 3 == 2:  # observe first, so a replan applies from the very next step
            adv.observe(step + 1, train_loss=losses[-1], val_metric=0.5, lr=adv.lr(step))
        sched.step()
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- recommend CLI
