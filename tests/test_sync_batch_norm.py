"""Synchronised batch norm: two gloo workers, each holding part of a batch, train exactly as one
process holding the whole batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spatiotemporal.layers.point_attention import PointBatchNorm
from spatiotemporal.layers.sync_batch_norm import synchronize_batch_norms

CHANNELS = 5
ROWS = (37, 91)  # unequal, as two point clouds are


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # A large mean beside a small spread: a sums-and-squares variance would lose it.
    x = torch.randn(sum(ROWS), CHANNELS, generator=g, dtype=torch.float64) * 0.01 + 100.0
    upstream = torch.randn(sum(ROWS), CHANNELS, generator=g, dtype=torch.float64)
    return x, upstream


def _bf16_batch() -> torch.Tensor:
    return (torch.randn(sum(ROWS), CHANNELS, generator=torch.Generator().manual_seed(1)) * 2 + 3).bfloat16()


def _fresh_norm() -> PointBatchNorm:
    norm = PointBatchNorm(CHANNELS).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
        norm.bias.copy_(torch.linspace(-1, 1, CHANNELS))
    return norm


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, upstream = _batch()
        rows = slice(0, ROWS[0]) if rank == 0 else slice(ROWS[0], None)
        norm = _fresh_norm()
        assert synchronize_batch_norms(norm) == 1
        mine = x[rows].clone().requires_grad_(True)
        y = norm(mine)
        (y * upstream[rows]).sum().backward()
        half = _fresh_norm().float()
        synchronize_batch_norms(half)
        y_bf16 = half(_bf16_batch()[rows])
        torch.save(
            {"y": y.detach(), "grad_x": mine.grad, "grad_weight": norm.weight.grad, "grad_bias": norm.bias.grad,
             "running_mean": norm.running_mean, "running_var": norm.running_var, "y_bf16": y_bf16.detach()},  # fmt: skip
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sync_bn")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    x, upstream = _batch()
    norm = _fresh_norm()
    x = x.clone().requires_grad_(True)
    y = norm(x)
    (y * upstream).sum().backward()
    return {"y": y.detach(), "grad_x": x.grad, "grad_weight": norm.weight.grad, "grad_bias": norm.bias.grad,
            "running_mean": norm.running_mean, "running_var": norm.running_var}  # fmt: skip


def test_outputs_are_those_of_one_batch_norm_over_both_workers(two_workers, one_process):
    torch.testing.assert_close(torch.cat([w["y"] for w in two_workers]), one_process["y"], rtol=0, atol=1e-9)


def test_input_gradients_include_the_other_workers_rows_through_the_statistics(two_workers, one_process):
    torch.testing.assert_close(torch.cat([w["grad_x"] for w in two_workers]), one_process["grad_x"], rtol=0, atol=1e-9)


def test_parameter_gradients_summed_over_workers_are_the_whole_batch_gradients(two_workers, one_process):
    # DDP then averages them, as it does for the loss of every batch.
    for key in ("grad_weight", "grad_bias"):
        torch.testing.assert_close(two_workers[0][key] + two_workers[1][key], one_process[key], rtol=1e-10, atol=1e-9)


def test_running_statistics_are_the_whole_batch_statistics_on_every_worker(two_workers, one_process):
    for worker in two_workers:
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(worker[key], one_process[key], rtol=1e-10, atol=1e-12)


def test_bf16_inputs_are_normalised_with_float32_statistics_and_stay_bf16(two_workers):
    y = torch.cat([w["y_bf16"] for w in two_workers])
    assert y.dtype == torch.bfloat16
    expected = _fresh_norm().float()(_bf16_batch().float())
    torch.testing.assert_close(y.float(), expected.detach(), rtol=0, atol=2e-2)


def test_without_a_process_group_it_is_plain_batch_norm(one_process):
    x, upstream = _batch()
    norm = _fresh_norm()
    synchronize_batch_norms(norm)
    torch.testing.assert_close(norm(x), one_process["y"], rtol=0, atol=0)


def test_a_batch_norm_that_cannot_synchronise_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(TypeError, match="1: BatchNorm1d cannot synchronise"):
        synchronize_batch_norms(model)
