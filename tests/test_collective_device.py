"""Collectives run on the device the process group's backend takes: the CPU under gloo, the current
GPU under NCCL, which rejects CPU tensors. The NCCL branch needs a GPU, so its decision is checked on
the backend name; the CPU path runs in real gloo groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spatiotemporal.distributed import collective_device, collective_device_type


def test_outside_torch_distributed_collectives_use_the_cpu():
    assert not dist.is_initialized()
    assert collective_device() == torch.device("cpu")


def test_a_gloo_group_uses_the_cpu(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert collective_device() == torch.device("cpu")
    finally:
        dist.destroy_process_group()


def test_nccl_uses_cuda():
    assert collective_device_type("nccl") == "cuda"


def test_gloo_uses_the_cpu():
    assert collective_device_type("gloo") == "cpu"


def test_a_per_device_group_with_a_cpu_backend_uses_the_cpu():
    # What init_process_group() gives without a backend on a GPU machine.
    assert collective_device_type("cpu:gloo,cuda:nccl") == "cpu"


def test_a_group_registered_for_cuda_only_uses_cuda():
    assert collective_device_type("cuda:gloo") == "cuda"


def _reduce_worker(rank: int, store: str, out_dir: str) -> None:
    from spatiotemporal.eval.scannet import ScanNetEvaluator
    from spatiotemporal.train.loop import _all_reduce_sum

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        evaluator = ScanNetEvaluator()
        # nyu40 1 = wall, 2 = floor. Rank 0 gets both right; rank 1 calls a wall floor.
        gt, pred = ([1, 2], [1, 2]) if rank == 0 else ([1], [2])
        evaluator.update(np.array(pred), np.array(gt))
        evaluator.gather()
        sums = _all_reduce_sum([1.5, float(rank)])
        np.savez(
            f"{out_dir}/rank{rank}.npz",
            confusion=evaluator.confusion,
            num_scenes=evaluator.num_scenes,
            sums=np.array(sums),
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks holds after the ScanNet gather and the training loop's sum."""
    out = tmp_path_factory.mktemp("reduce")
    mp.spawn(_reduce_worker, args=(str(out / "store"), str(out)), nprocs=2, join=True)
    return [dict(np.load(Path(out) / f"rank{rank}.npz")) for rank in range(2)]


def test_scannet_gather_sums_every_ranks_confusion_under_gloo(reduced):
    expected = np.zeros((20, 21), dtype=np.int64)
    expected[0, 0] = 1  # wall as wall
    expected[1, 1] = 1  # floor as floor
    expected[0, 1] = 1  # wall as floor
    for rank in reduced:
        assert rank["confusion"].tolist() == expected.tolist()
        assert int(rank["num_scenes"]) == 2


def test_training_sums_are_reduced_over_ranks_under_gloo(reduced):
    for rank in reduced:
        assert rank["sums"].tolist() == [3.0, 1.0]
