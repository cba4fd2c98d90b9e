"""A PyTorch LR scheduler over the advisor: two lines in a plain training loop.

>>> # advisor = Advisor(Bundle.load("bundle/"), total_steps=840)
>>> # scheduler = AdvisorLR(optimizer, advisor)
>>> # ... each step: loss.backward(); optimizer.step()
>>> # ...            at a log point: advisor.observe(step, train_loss=..., val_metric=..., lr=...)
>>> # ...            scheduler.step()   # after observe, so a replan applies at once
"""

from __future__ import annotations

from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.following import AdvisorLike
from tracker_sched.bundle.folder import Bundle

LrSource = AdvisorLike  # compat: remove in 0.3 (the scheduler's own name for the interface)


class AdvisorLR(LRScheduler):
    """Sets every param group's lr from the advisor at each ``step()``.

    Groups keep their ratio to the first group's initial lr, so a model with
    per-group lrs (e.g. a lower lr for the backbone) keeps that structure.

    Args:
        optimizer: the optimizer whose param groups get the lr.
        advisor: any advisor (:class:`~tracker_sched.advising.advisor.Advisor`,
            :class:`~tracker_sched.advising.remote.RemoteAdvisor`): its ``lr(step)`` is used.
        last_epoch: as in every ``LRScheduler`` (-1: a new run).

    Raises:
        Nothing of ours: the advisor's ``lr`` never raises.
    """

    def __init__(self, optimizer: Optimizer, advisor: AdvisorLike, last_epoch: int = -1) -> None:
        self.advisor = advisor
        super().__init__(optimizer, last_epoch)

    @classmethod
    def from_bundle(
        cls,
        optimizer: Optimizer,
        bundle: Bundle,
        total_steps: int,
        *,
        mode: Literal["auto", "generative", "control", "best"] | None = None,
        **advisor_kw: Any,
    ) -> AdvisorLR:
        """An advisor for ``bundle`` in ``mode`` (default: the bundle's kind; control needs a
        control-mode bundle) and its scheduler in one call; ``advisor_kw`` go to
        :class:`Advisor`."""
        return cls(optimizer, Advisor(bundle, total_steps, mode=mode, **advisor_kw))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = self.advisor.lr(self.last_epoch)
        bases = [float(b) for b in self.base_lrs]
        base0 = bases[0] or 1.0
        return [lr * (base / base0) for base in bases]
