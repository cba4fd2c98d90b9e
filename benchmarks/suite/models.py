"""Data and models of the suite's new tasks (the MNIST-1D ones live in tracker_sched.tasks).

Every data set is made here from a fixed seed, or read from scikit-learn's bundled
files (``load_digits``): nothing is downloaded. Splits are cached per process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from benchmarks.suite.loop import Data

_CACHE: dict[str, Data] = {}


def _t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


# ------------------------------------------------------------------ language model

VOCAB = 16
HALF = 12  # tokens of the Markov prefix; the rest of a sequence copies it


def lm_data() -> Data:
    """Sequences of 24 tokens: 12 from a sparse random order-2 Markov chain, then a
    copy of those 12. The first half needs n-gram statistics, the second attention
    back to the first (induction). Inputs are tokens 0..22, targets tokens 1..23;
    2,000 train, 128 validation, 512 test sequences."""
    if "lm" in _CACHE:
        return _CACHE["lm"]
    rng = np.random.RandomState(11)
    trans = rng.dirichlet(np.full(VOCAB, 0.15), size=(VOCAB, VOCAB))
    n = 2000 + 128 + 512
    seqs = np.zeros((n, 2 * HALF), dtype=np.int64)
    seqs[:, :2] = rng.randint(VOCAB, size=(n, 2))
    cum = trans.cumsum(-1)
    for t in range(2, HALF):
        u = rng.rand(n, 1)
        seqs[:, t] = (u > cum[seqs[:, t - 2], seqs[:, t - 1]]).sum(-1).clip(max=VOCAB - 1)
    seqs[:, HALF:] = seqs[:, :HALF]
    x, y = _t(seqs[:, :-1], torch.int64), _t(seqs[:, 1:], torch.int64)
    data = Data(x[:2000], y[:2000], x[2000:2128], y[2000:2128], x[2128:], y[2128:])
    _CACHE["lm"] = data
    return data


class TinyLM(nn.Module):
    """A 2-layer causal transformer, width 32, 2 heads; input (batch, time) tokens."""

    def __init__(self, width: int = 32, layers: int = 2, heads: int = 2, length: int = 23) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        out: torch.Tensor = self.head(self.norm(h))
        return out


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


def lm_val_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(lm_loss(net(x), y))


# ------------------------------------------------------------------ digits (sklearn)


def digits_data() -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images), pixels / 16 plus fixed
    Gaussian noise (sd 0.25) so that accuracy is not saturated; 700 train, 400
    validation, 697 test, split by a fixed permutation."""
    if "digits" in _CACHE:
        return _CACHE["digits"]
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit('the digits tasks need scikit-learn, which MLflow brings: pip '
                         'install "tracker-sched[mlflow]"') from exc
    d = load_digits()
    rng = np.random.RandomState(5)
    x = d.images.astype(np.float32) / 16.0
    x = x + rng.normal(0, 0.25, size=x.shape).astype(np.float32)
    y = d.target.astype(np.int64)
    p = rng.permutation(len(y))
    x, y = x[p], y[p]
    xt, yt = _t(x[:, None]), _t(y, torch.int64)
    data = Data(xt[:700], yt[:700], xt[700:1100], yt[700:1100], xt[1100:], yt[1100:])
    _CACHE["digits"] = data
    return data


class DigitsCNN(nn.Module):
    """conv 1->16 (3x3) -> conv 16->32 (3x3, stride 2) -> linear; input (batch, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class DigitsMLP(nn.Module):
    """64 -> 128 -> 10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(dim=1) == y).float().mean())


# ------------------------------------------------------------------ Friedman #1


def friedman_data() -> Data:
    """Friedman #1 (Friedman 1991), generated here: 10 uniform features, 5 of them used,
    y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + N(0, 1); 1,000 train, 500
    validation, 1,000 test. The noise floor of the MSE is 1.0."""
    if "friedman" in _CACHE:
        return _CACHE["friedman"]
    rng = np.random.RandomState(3)
    n = 2500
    x = rng.rand(n, 10)
    y = (10 * np.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3]
         + 5 * x[:, 4] + rng.normal(0, 1, n))
    xt, yt = _t(x), _t(y)
    data = Data(xt[:1000], yt[:1000], xt[1000:1500], yt[1000:1500], xt[1500:], yt[1500:])
    _CACHE["friedman"] = data
    return data


class RegMLP(nn.Module):
    """10 -> 64 -> 64 -> 1 with ReLU; predicts y - 14 (about its mean) for a sane start."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).squeeze(-1) + 14.0
        return out


def mse_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred, y)


def mse(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(mse_loss(net(x), y))
