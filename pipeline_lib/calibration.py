"""Post-hoc calibration fitted on val: temperature scaling and Platt scaling.

Temperature scaling (Guo et al., 2017) divides all logits by one scalar, fitted on val NLL; the
calibrate stage applies it to the teacher. Platt scaling (Platt, 1999) maps the melanoma
log-odds ``L`` to ``slope * L + intercept``, fitted by logistic regression on val; the quantize
stage builds it into each int8 export (:class:`MelanomaPlatt`), whose quantization shifts
p(melanoma) in a way one temperature cannot undo.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline_lib import data

# scikit-learn is imported inside the Platt functions: `melanoma-kd predict` imports this
# module for the temperature and must start fast.


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


def melanoma_log_odds(logits, task: str) -> np.ndarray:
    """``log p(mel) - log(1 - p(mel))`` of binary ``(N,)`` or dx ``(N, 7)`` logits, stably."""
    z = np.asarray(logits, dtype=np.float64)
    if task == "binary":
        return z
    others = torch.from_numpy(np.delete(z, data.MELANOMA_INDEX, axis=1))
    return z[:, data.MELANOMA_INDEX] - torch.logsumexp(others, dim=1).numpy()


def _platt_model():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=np.inf)  # two parameters, unpenalised: maximum likelihood


def fit_platt(logits, labels, task: str) -> tuple[float, float]:
    """Slope and intercept of Platt scaling on the melanoma log-odds (logistic regression).

    Args:
        logits: ``(N,)`` binary or ``(N, 7)`` dx logits, from the validation split.
        labels: melanoma labels (0/1).
    """
    model = _platt_model().fit(melanoma_log_odds(logits, task)[:, None], np.asarray(labels))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def cross_fitted_platt(logits, labels, task: str, folds: int = 5, seed: int = 0) -> np.ndarray:
    """p(melanoma) of each image from a Platt fit on the other folds (stratified).

    The ECE of these probabilities estimates the calibration Platt scaling gives on unseen
    images; the ECE of an in-sample fit is optimistic.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    x = melanoma_log_odds(logits, task)[:, None]
    proba = cross_val_predict(_platt_model(), x, np.asarray(labels), cv=cv, method="predict_proba")
    return proba[:, 1]


class MelanomaPlatt(torch.nn.Module):
    """Platt scaling of the melanoma log-odds, as logits in and logits out.

    Binary: ``slope * z + intercept``. Dx: only the melanoma logit moves, to
    ``z_mel + (slope - 1) * L + intercept`` with ``L = z_mel - logsumexp(z_others)``, so the
    softmax gives ``p(mel) = sigmoid(slope * L + intercept)`` and the other diagnoses keep their
    ratios to each other.
    """

    def __init__(self, slope: float, intercept: float, task: str):
        super().__init__()
        self.slope, self.intercept, self.task = float(slope), float(intercept), task
        others = [i for i in range(len(data.DX_CODES)) if i != data.MELANOMA_INDEX]
        self.register_buffer("others", torch.tensor(others), persistent=False)
        onehot = torch.zeros(len(data.DX_CODES))
        onehot[data.MELANOMA_INDEX] = 1.0
        self.register_buffer("melanoma", onehot, persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return logits * self.slope + self.intercept
        mel = logits[:, data.MELANOMA_INDEX : data.MELANOMA_INDEX + 1]
        log_odds = mel - torch.logsumexp(logits.index_select(1, self.others), 1, keepdim=True)
        return logits + ((self.slope - 1.0) * log_odds + self.intercept) * self.melanoma
