"""Temperature scaling (Guo et al., 2017): one scalar dividing the logits, fitted on val NLL."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nll(logits, targets, task: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` (labels or dx indices) at ``temperature``."""
    z = torch.tensor(np.asarray(logits), dtype=torch.float64) / temperature
    y = torch.tensor(np.asarray(targets))
    if task == "binary":
        return float(F.binary_cross_entropy_with_logits(z, y.double()))
    return float(F.cross_entropy(z, y.long()))


def fit_temperature(logits, targets, task: str, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``logits / T`` (LBFGS on ``log T``).

    Args:
        logits: ``(N,)`` binary logits or ``(N, 7)`` dx logits, from the validation split.
        targets: melanoma labels (binary) or dx indices (dx).
    """
    z = torch.tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.tensor(np.asarray(targets))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays > 0
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = z / log_t.exp()
        loss = (
            F.binary_cross_entropy_with_logits(scaled, y.double())
            if task == "binary"
            else F.cross_entropy(scaled, y.long())
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


class Calibrated(torch.nn.Module):
    """A model whose logits are divided by a fitted temperature."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature
