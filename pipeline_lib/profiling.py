"""Where a training step's time goes: augmentation, forward, backward, optimizer (and the
teacher's forward when distilling), measured on the prepared cache with the params' settings.

``python -m pipeline_lib.profiling --stage distill`` prints a table and, with ``--out``,
writes it as JSON. The ``prepare`` stage's own ``seconds`` covers JPEG decoding, which happens
once; nothing in the training loop decodes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from pipeline_lib import artifacts, augment, distributed, models, runs, training
from pipeline_lib.config import AugmentParams, TeacherRuntime, TrainParams, load

PHASES = ("augment", "teacher_forward", "forward", "backward", "optimizer")


def profile_steps(
    model: nn.Module,
    images: np.ndarray,
    params: TrainParams,
    aug: AugmentParams,
    steps: int = 10,
    warmup: int = 2,
    teacher: nn.Module | None = None,
    runtime: TeacherRuntime = "torch",
    compile: bool = False,
) -> dict[str, float]:
    """Mean seconds per training step in each phase, after ``warmup`` untimed steps.

    The step is the training loop's (:func:`pipeline_lib.training.fit`): channels_last, its AdamW;
    the loss is a stand-in (mean logit) since the loss itself costs nothing next to the model.
    ``compile`` runs the model through ``torch.compile`` (inductor), to measure what it would buy
    the loop; the warm-up steps then include the compilation (``compile_seconds``).
    """
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(params.seed)
    cache = torch.from_numpy(np.ascontiguousarray(images))
    model = model.to(memory_format=torch.channels_last).train()
    if teacher is not None:  # as the loop runs it (kd.teacher_runtime)
        teacher = training.frozen_runner(teacher.eval().requires_grad_(False), runtime, device)
    # The loop's optimizer (timm's AdamW: no weight decay on norms and biases).
    optimizer = create_optimizer_v2(model, "adamw", lr=params.lr, weight_decay=params.weight_decay)
    forward = torch.compile(model) if compile else model
    totals = dict.fromkeys(PHASES, 0.0)
    began = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            warmup_seconds = time.perf_counter() - began
        idx = torch.randint(len(cache), (params.batch_size,), generator=g)
        t = [time.perf_counter()]
        x = augment.augment(cache[idx], params.image_size, aug, g)
        t.append(time.perf_counter())
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        t.append(time.perf_counter() if teacher is not None else t[-1])
        loss = forward(x).float().mean()
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        if step >= warmup:
            for phase, a, b in zip(PHASES, t, t[1:], strict=False):
                totals[phase] += b - a
    out = {phase: s / steps for phase, s in totals.items()}
    out["step"] = sum(out.values())
    out["images_per_second"] = params.batch_size / out["step"]
    if compile:
        out["compile_seconds"] = warmup_seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["train_teacher", "distill"], default="train_teacher")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--split", default="data/split")
    parser.add_argument("--teacher", default="data/teacher/model.pt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="the model under torch.compile")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    params, aug = load(args.stage, args.params), load("augment", args.params)
    train = runs.load_split(args.prepared, args.split, "train")
    torch.manual_seed(params.seed)
    model = runs.create_model(params)
    teacher = models.load_checkpoint(args.teacher)[0] if args.stage == "distill" else None
    runtime = load("kd", args.params).teacher_runtime
    bf16 = distributed.use_bf16(params.bf16, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        result = profile_steps(
            model, train.images, params, aug, args.steps, teacher=teacher, runtime=runtime,
            compile=args.compile,
        )  # fmt: skip
    result |= {"stage": args.stage, "arch": params.arch, "batch_size": params.batch_size,
               "threads": torch.get_num_threads(), "bf16": bf16,
               "teacher_runtime": runtime, "compiled": args.compile}  # fmt: skip
    for phase in PHASES:
        share = result[phase] / result["step"]
        print(f"{phase:>16}: {result[phase] * 1000:8.1f} ms/step  {share:6.1%}")
    print(
        f"{'step':>16}: {result['step'] * 1000:8.1f} ms  ({result['images_per_second']:.0f} img/s)"
    )
    if args.out:
        artifacts.write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
