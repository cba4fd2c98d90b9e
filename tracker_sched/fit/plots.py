"""Pictures of a fit: held-out forecasts against what the runs really did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracker_sched._optional import require
from tracker_sched.data.grid import CHANNELS, Normalisation, SweepTensors
from tracker_sched.model.forecast import Forecaster


def _pyplot() -> Any:
    require("matplotlib").use("Agg")
    return require("matplotlib.pyplot")


def plot_forecasts(
    path: str | Path,
    forecaster: Forecaster,
    data: SweepTensors,
    norm: Normalisation,
    run_ids: list[str],
    taus: tuple[float, ...],
    window: int,
    *,
    max_runs: int = 6,
) -> Path:
    """One row per held-out run, one column per channel: actual, context, forecasts."""
    plt = _pyplot()
    g = data.grid_points
    n = min(max_runs, int(data.values.shape[0]))
    tau_grid = np.linspace(0, 1, g)
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)
    fig, axes = plt.subplots(n, 3, figsize=(12, 2.2 * n + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, name in enumerate(CHANNELS):
        axes[0, c].set_title(name)
    for r in range(n):
        actual = data.values[r].numpy() * std + mean
        mask = data.mask[r].numpy()
        for c in range(3):
            ax = axes[r, c]
            ax.plot(tau_grid[mask[:, c]], actual[mask[:, c], c], color="black", lw=1, label="run")
        for j, tau in enumerate(taus):
            end = round(tau * (g - 1))
            pred = forecaster.forecast(
                data, torch.tensor([r]), torch.tensor([end]), torch.tensor([window])
            )[0].numpy() * std + mean
            for c in range(3):
                axes[r, c].plot(tau_grid[end:], pred[:, c], color=colours[j % len(colours)],
                                lw=1.2, ls="--", label=f"forecast from tau={tau:g}")
                axes[r, c].axvline(tau, color=colours[j % len(colours)], lw=0.5, alpha=0.5)
        axes[r, 0].set_ylabel(run_ids[r], fontsize=7)
    axes[0, 2].legend(fontsize=6, loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("tau = step / total_steps")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
