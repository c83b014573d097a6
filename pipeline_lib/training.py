"""One training loop for teacher and student; objectives decide the loss and return its parts.

timm's ``LogitDistillationTask`` is softmax-only; the binary task here needs a Bernoulli KL on a
single logit, and the teacher must see the very batch the student sees after augmentation
(consistent teaching), so the two small objectives below replace it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from pipeline_lib import augment, distributed, losses, metrics
from pipeline_lib.config import AugmentParams, TeacherRuntime, TrainParams
from pipeline_lib.data import MELANOMA_INDEX, melanoma_probability
from pipeline_lib.inference import OnnxRuntimeModule, predict_logits, resize
from pipeline_lib.memo import MemoizedTeacher, fingerprint


@dataclass(frozen=True)
class Batch:
    """Targets of one batch: binary melanoma label and 7-way dx index.

    After mixup/cutmix, ``partner`` holds the targets of the images mixed in: the hard loss is
    ``lam * loss(own) + (1 - lam) * loss(partner)``. With the student's acquisition shift on,
    ``clean`` holds the images before it: the teacher sees those, so the student learns to say
    on a shifted photo what the teacher says on the unshifted one.
    """

    label: torch.Tensor
    dx: torch.Tensor
    partner: Batch | None = None
    lam: float = 1.0
    clean: torch.Tensor | None = None

    def take(self, rows: torch.Tensor | slice, device: torch.device) -> Batch:
        """The targets of ``rows``, on ``device``."""
        partner = None if self.partner is None else self.partner.take(rows, device)
        clean = None if self.clean is None else self.clean[rows].to(device, non_blocking=True)
        return Batch(
            self.label[rows].to(device), self.dx[rows].to(device), partner, self.lam, clean
        )


def task_target(task: str, batch: Batch) -> torch.Tensor:
    """The hard target of ``task``: the melanoma label or the dx index."""
    return batch.label if task == "binary" else batch.dx


def binary_logit(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Melanoma logit ``log p/(1-p)`` from either task's output."""
    if task == "binary":
        return logits
    log_p = torch.log_softmax(logits.float(), dim=-1)
    mel = log_p[:, MELANOMA_INDEX]
    rest = torch.logsumexp(
        torch.cat([log_p[:, :MELANOMA_INDEX], log_p[:, MELANOMA_INDEX + 1 :]], 1), 1
    )
    return mel - rest


class Supervised:
    """Hard-label objective: ``{"loss": hard, "hard": hard, "soft": 0}``."""

    def __init__(self, task: str, loss: str, pos_weight: float = 1.0, focal_gamma: float = 2.0):
        if task not in losses.LOSS_TASKS[loss]:
            raise ValueError(
                f"loss {loss!r} is for the {' or '.join(losses.LOSS_TASKS[loss])} task, "
                f"not {task!r}"
            )
        self.task = task
        self.loss_fn = losses.LOSSES[loss]
        self.kwargs = {"pos_weight": pos_weight, "gamma": focal_gamma}

    def to(self, device: torch.device) -> Supervised:
        """Put whatever the objective holds on ``device`` (nothing for hard labels)."""
        return self

    def hard(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        loss = self.loss_fn(logits.float(), task_target(self.task, batch), **self.kwargs)
        if batch.partner is None:
            return loss
        other = self.loss_fn(logits.float(), task_target(self.task, batch.partner), **self.kwargs)
        return batch.lam * loss + (1 - batch.lam) * other

    def __call__(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        hard = self.hard(model(x), batch)
        return {"loss": hard, "hard": hard.detach(), "soft": torch.zeros(())}


def frozen_runner(model: nn.Module, runtime: TeacherRuntime, device: torch.device) -> nn.Module:
    """The frozen ``model`` on ``device`` (channels_last) or in ONNX Runtime, per
    ``kd.teacher_runtime``."""
    if runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu"):
        return OnnxRuntimeModule(model.cpu())
    return model.to(device, memory_format=torch.channels_last)


class Distillation(Supervised):
    """``(1 - alpha) * hard + alpha * soft`` with a frozen teacher on the same augmented batch.

    Args:
        teacher: frozen here (eval mode, no gradients).
        teacher_task: ``binary`` or ``dx``. A dx teacher can teach a binary student through its
            melanoma logit; a binary teacher cannot teach a dx student.
        teacher_temperature: calibration temperature dividing the teacher's logits (1 = raw).
        temperature: KD softening temperature.
        alpha: weight of the soft (teacher) term.
        teacher_image_size: the teacher's input size; a student batch of another size is resized
            to it, so the teacher sees the same (augmented, mixed) images at the scale it was
            trained on. ``None`` feeds the batch as it is.
        teacher_runtime: what runs the frozen teacher's forward: ``torch``; ``onnxruntime``
            (:class:`inference.OnnxRuntimeModule`, CPU; the same logits to float rounding, a
            distillation epoch about 15% faster on a 2-core CPU); ``auto`` = onnxruntime when
            training on CPU, torch on GPU (where the teacher also gets the loop's bf16 autocast).
        memo: a SQLite file memoizing the teacher's outputs on the CPU by content
            (:class:`pipeline_lib.memo.MemoizedTeacher`), shared by every run with the same teacher;
            ``None`` computes every batch.
    """

    def __init__(
        self,
        teacher: nn.Module,
        teacher_task: str,
        task: str,
        loss: str,
        temperature: float,
        alpha: float,
        teacher_temperature: float = 1.0,
        pos_weight: float = 1.0,
        focal_gamma: float = 2.0,
        teacher_image_size: int | None = None,
        teacher_runtime: TeacherRuntime = "torch",
        memo: Path | None = None,
    ):
        super().__init__(task, loss, pos_weight, focal_gamma)
        self.memo, self._placed = memo, False
        self.teacher_image_size = teacher_image_size
        if teacher_runtime not in get_args(TeacherRuntime):
            raise ValueError(
                f"kd.teacher_runtime must be one of {get_args(TeacherRuntime)}, got {teacher_runtime!r}"
            )
        self.teacher_runtime = teacher_runtime
        if task == "dx" and teacher_task != "dx":
            raise ValueError("a binary teacher cannot distil into a dx student")
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(
                f"kd.alpha must be in [0, 1] and kd.temperature > 0, got {alpha}, {temperature}"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_task = teacher_task
        self.temperature, self.alpha, self.teacher_temperature = (
            temperature,
            alpha,
            teacher_temperature,
        )

    def teacher_view(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch at the teacher's input size, resized as inference resizes."""
        if self.teacher_image_size is None or x.shape[-2:] == (self.teacher_image_size,) * 2:
            return x
        return resize(x, self.teacher_image_size)

    def to(self, device: torch.device) -> Distillation:
        if self._placed:
            return self
        runner = frozen_runner(self.teacher, self.teacher_runtime, device)
        if self.memo is not None and device.type == "cpu":
            ort = isinstance(runner, OnnxRuntimeModule)
            key = fingerprint(self.teacher, "onnxruntime" if ort else "torch")
            runner = MemoizedTeacher(runner, key, self.memo, autocast_free=ort)
        self.teacher, self._placed = runner, True
        return self

    def __call__(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        student = model(x)
        hard = self.hard(student, batch)
        if self.alpha == 0:
            return {"loss": hard, "hard": hard.detach(), "soft": torch.zeros(())}
        seen = x if batch.clean is None else batch.clean  # the unshifted images, when shifted
        with torch.no_grad():
            teacher = self.teacher(self.teacher_view(seen)).float() / self.teacher_temperature
        if self.task == "dx":
            soft = losses.softmax_kd(student, teacher, self.temperature)
        else:
            target = binary_logit(teacher, self.teacher_task)
            soft = losses.bernoulli_kd(student, target, self.temperature)
        loss = (1 - self.alpha) * hard + self.alpha * soft
        return {"loss": loss, "hard": hard.detach(), "soft": soft.detach()}


PARTS = ("loss", "hard", "soft")
Objective = Callable[[nn.Module, torch.Tensor, Batch], dict[str, torch.Tensor]]


@dataclass
class FitResult:
    """The best model (loaded), where it was found and what the loop saw."""

    model: nn.Module
    best_epoch: int
    best_metrics: dict[str, float]
    val_logits: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    rank: int = 0


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(labels: np.ndarray, oversample: float, g: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: a permutation, or weighted draws with melanoma ``oversample``:1."""
    n = len(labels)
    if oversample == 1.0:
        return torch.randperm(n, generator=g)
    weights = torch.where(torch.as_tensor(labels) == 1, oversample, 1.0).double()
    return torch.multinomial(weights, n, replacement=True, generator=g)


def create_optimizer(
    net: nn.Module, params: TrainParams
) -> tuple[torch.optim.Optimizer, list[bool]]:
    """AdamW with timm's parameter groups (no weight decay on norms and biases).

    With ``params.backbone_lr_scale != 1`` or ``params.freeze_epochs > 0`` the backbone and the
    classifier head get groups of their own: the backbone's learning rate is ``lr`` times the
    scale (pretrained features move less than a fresh head). Returns the optimizer and, per
    group, whether it holds backbone parameters (the scheduler holds those at 0 while frozen).
    """
    if params.backbone_lr_scale == 1.0 and params.freeze_epochs == 0:
        optimizer = create_optimizer_v2(
            net, "adamw", lr=params.lr, weight_decay=params.weight_decay
        )
        return optimizer, [False] * len(optimizer.param_groups)
    head = distributed.unwrap(net).backbone.get_classifier()
    head_ids = {id(p) for p in head.parameters()}
    groups = []
    for part_is_backbone in (True, False):
        wanted = [
            (n, p) for n, p in net.named_parameters() if (id(p) in head_ids) != part_is_backbone
        ]
        scale = params.backbone_lr_scale if part_is_backbone else 1.0
        for decay in (True, False):
            chosen = [p for n, p in wanted if (p.ndim > 1 and not n.endswith(".bias")) == decay]
            if chosen:
                groups.append({
                    "params": chosen,
                    "lr": params.lr * scale,
                    "weight_decay": params.weight_decay if decay else 0.0,
                    "is_backbone": part_is_backbone,
                })  # fmt: skip
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "is_backbone"} for g in groups], lr=params.lr
    )
    return optimizer, [g["is_backbone"] for g in groups]


def fit(
    model: nn.Module,
    objective: Objective,
    train_images: np.ndarray,
    train_targets: Batch,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    params: TrainParams,
    aug: AugmentParams,
    ece_bins: int = 15,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` with AdamW, warm-up + cosine, clipping and early stopping on val ROC-AUC.

    Runs on ``params.device`` under bf16 autocast where :func:`pipeline_lib.distributed.use_bf16`
    says (every GPU; a CPU as ``params.bf16`` says, ``auto`` = where it is native) and, under ``torchrun``, in
    DistributedDataParallel: every rank augments the same global batch of ``params.batch_size``
    and trains on its slice (:mod:`pipeline_lib.distributed`). ``params.mixup_alpha`` /
    ``cutmix_alpha`` mix that global batch after augmentation (a distillation teacher sees the
    mixed images too); ``params.ema_decay > 0`` scores, selects and returns timm's
    ``ModelEmaV3`` of the weights instead of the raw weights.

    Args:
        train_images: uint8 ``(N, 3, H, W)``; augmented per batch to ``params.image_size``.
        val_labels: melanoma labels of ``val_images``; the best epoch is chosen on them.
        log: called once per epoch with that epoch's figures (e.g. dvclive), on rank 0 only.
    """
    ctx = distributed.setup(params.device)
    main = ctx.is_main
    g = torch.Generator().manual_seed(params.seed)
    images = torch.from_numpy(np.ascontiguousarray(train_images))
    labels = train_targets.label.numpy()
    steps_per_epoch = math.ceil(len(images) / params.batch_size)
    if 0 < len(images) % params.batch_size < ctx.world_size:
        steps_per_epoch -= 1  # a last batch too small to give every rank an image is dropped
    total = steps_per_epoch * params.epochs
    warmup = round(params.warmup_epochs * steps_per_epoch)
    net = distributed.wrap(model, ctx)
    module = distributed.unwrap(net)
    if isinstance(objective, Supervised):
        objective = objective.to(ctx.device)
    optimizer, is_backbone = create_optimizer(net, params)
    # Warm-up makes the average follow the weights early on (decay 1 - (1 + step)^(-2/3)).
    ema = ModelEmaV3(module, params.ema_decay, use_warmup=True) if params.ema_decay else None
    mixing = params.mixup_alpha > 0 or params.cutmix_alpha > 0
    frozen = round(params.freeze_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [
            (lambda s: 0.0 if s < frozen else warmup_cosine(s - frozen, total - frozen, warmup))
            if backbone
            else (lambda s: warmup_cosine(s, total, warmup))
            for backbone in is_backbone
        ],
    )
    mixed = distributed.use_bf16(params.bf16, ctx.device)
    if progress and main:
        print(f"precision: {'bf16 autocast' if mixed else 'float32'} on {ctx.device}")
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=mixed)
    best: FitResult | None = None
    history: list[dict[str, float]] = []

    def score_val(model: nn.Module, device: torch.device | str) -> tuple[np.ndarray, dict]:
        z = predict_logits(model, val_images, params.image_size, device=device)
        probs = melanoma_probability(z, "binary" if z.ndim == 1 else "dx")
        return z, metrics.summary(val_labels, probs, ece_bins, prefix="val_")

    start, seen, train_time = time.perf_counter(), 0, 0.0
    for epoch in range(params.epochs):
        net.train()
        t0 = time.perf_counter()
        order = epoch_order(labels, params.oversample_melanoma, g)
        sums = torch.zeros(4, dtype=torch.float64)  # loss, hard, soft summed over images; images
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{params.epochs}",
            disable=not (progress and main),
        )
        for step in bar:
            idx = order[step * params.batch_size : (step + 1) * params.batch_size]
            # Every rank draws the whole batch's augmentation, so the random stream stays shared.
            mine = distributed.shard(len(idx), ctx)
            x = augment.augment(images[idx], params.image_size, aug, g)
            batch = train_targets.take(idx, torch.device("cpu"))
            if mixing:
                x, perm, lam = augment.mix(x, params.mixup_alpha, params.cutmix_alpha, g)
                batch = dataclasses.replace(
                    batch, partner=batch.take(perm, batch.label.device), lam=lam
                )
            if augment.shifts_acquisition(aug):  # the student's camera shift, after any mixing
                batch = dataclasses.replace(batch, clean=x)
                x = augment.acquisition(x, aug, g)
            x = x[mine].to(ctx.device, non_blocking=True)
            with autocast:
                parts = objective(net, x, batch.take(mine, ctx.device))
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting by the slice size makes that the
            # gradient of the whole batch's mean loss even when slices differ by one image.
            share = len(x) * ctx.world_size / len(idx)
            (parts["loss"] * share).backward()
            if params.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(module, step=scheduler.last_epoch)
            sums += torch.tensor([float(parts[k].detach()) for k in PARTS] + [1.0]) * len(x)
            seen += len(idx)
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
        if ctx.world_size > 1:
            torch.distributed.all_reduce(sums)
        distributed.sync_buffers(module, ctx)
        scored = module if ema is None else ema.module
        if ema is not None:
            distributed.sync_buffers(scored, ctx)
        epoch_train = time.perf_counter() - t0
        train_time += epoch_train
        # Scored under the training precision (bf16 halves the teacher's 11 s val pass on this
        # CPU); the chosen epoch is re-scored in float32 below. Every rank scores (the weights
        # are identical), so all take the same early-stopping decision.
        with autocast:
            val_logits, val_metrics = score_val(scored, ctx.device)
        row = {f"train_{k}": float(v / sums[-1]) for k, v in zip(PARTS, sums[:3], strict=True)}
        row |= val_metrics
        row |= {
            "lr": optimizer.param_groups[-1]["lr"],  # the head's
            "epoch_seconds": time.perf_counter() - t0,
            "epoch": epoch + 1,
        }
        history.append(row)
        if log is not None and main:
            log(row)
        if progress and main:
            print(
                f"epoch {epoch + 1}: loss {row['train_loss']:.4f} val ROC-AUC {row['val_roc_auc']:.4f} ECE {row['val_ece']:.4f} ({row['epoch_seconds']:.0f}s)"
            )
        score = row["val_roc_auc"] if math.isfinite(row["val_roc_auc"]) else -1.0
        if best is None or score > best.best_metrics["val_roc_auc"]:
            best = FitResult(
                copy.deepcopy(scored).cpu().eval(),
                epoch + 1,
                dict(row) | {"val_roc_auc": score},
                val_logits,
                rank=ctx.rank,
            )
        elif epoch + 1 - best.best_epoch >= params.patience:
            if progress and main:
                print(f"early stop: no val ROC-AUC gain for {params.patience} epochs")
            break
    assert best is not None, "epochs must be >= 1"
    if mixed:  # report the chosen epoch as every later stage scores it: in float32
        best.val_logits, val_metrics = score_val(best.model, "cpu")  # best.model lives on the CPU
        best.best_metrics |= val_metrics
    best.history = history
    best.seconds = time.perf_counter() - start
    best.images_per_second = seen / train_time if train_time else 0.0
    return best
