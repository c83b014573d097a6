import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from pipeline_lib import distributed

SCRIPT = REPO / "tests" / "ddp_fit.py"


@pytest.mark.parametrize("n", [1, 7, 25, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_the_batch_once(n, world):
    parts = [
        distributed.shard(n, distributed.Context(r, world, torch.device("cpu")))
        for r in range(world)
    ]
    rows = [i for s in parts for i in range(n)[s]]
    assert rows == list(range(n))
    assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1


def test_device_choice():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no GPU"):
            distributed.resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        distributed.resolve_device("tpu")


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(tmp_path, name, launcher, *args):
    out = tmp_path / f"{name}.pt"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [*launcher, str(SCRIPT), str(out), *args]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=300)
    return torch.load(out)


def test_two_torchrun_processes_train_like_one(tmp_path):
    """Two gloo processes (DDP, each on half of every batch) end where one process ends."""
    one = _run(tmp_path, "one", [sys.executable])
    two = _run(tmp_path, "two", TORCHRUN)
    assert (one["world"], two["world"]) == (1, 2)
    assert one["state"].keys() == two["state"].keys()
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert len(one["history"]) == len(two["history"]) == 2
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_roc_auc"] == pytest.approx(a["val_roc_auc"], abs=1e-6)
    # The check is not vacuous: training moved the weights and learned the darker class.
    assert one["history"][-1]["val_roc_auc"] > 0.7


def test_ranks_score_one_model_with_batchnorm(tmp_path):
    """BatchNorm statistics differ per rank after training; validation must see rank 0's on all
    ranks, or they would score differently and could disagree about early stopping."""
    _run(tmp_path, "bn", TORCHRUN, "bn")
    rank0, rank1 = (np.load(tmp_path / f"bn.pt.rank{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(rank0, rank1)
