"""The spconv wrapper equals a dense conv3d on the same voxels, forward and backward, on CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatiotemporal.layers.sparse_conv import SparseConvPE, SparseVoxels, SubMConv3d, spconv_threads

SIZE = 20


def random_voxels(n: int = 2000, channels: int = 8, seed: int = 0, batch_size: int = 2):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch_size):
        flat = torch.randperm(SIZE**3, generator=g)[: n // batch_size]
        grid = torch.stack([flat // SIZE**2, (flat // SIZE) % SIZE, flat % SIZE], 1)
        rows.append(torch.cat([torch.full((len(grid), 1), b), grid], 1))
    idx = torch.cat(rows)
    feat = torch.randn(len(idx), channels, generator=g, dtype=torch.float64).float()
    return idx, feat


def dense_reference(idx, feat, weight, bias):
    """Scatter voxels into a dense grid, conv3d, read back the occupied sites (submanifold)."""
    b, x, y, z = idx.T
    dense = torch.zeros(int(b.max()) + 1, feat.shape[1], SIZE, SIZE, SIZE, dtype=feat.dtype)
    dense[b, :, x, y, z] = feat
    w = weight.permute(0, 4, 1, 2, 3)  # spconv (out, kx, ky, kz, in) -> torch (out, in, kx, ky, kz)
    out = F.conv3d(dense, w, bias, padding=weight.shape[1] // 2)
    return out[b, :, x, y, z]


def test_forward_matches_dense_conv3d_with_many_threads():
    torch.manual_seed(0)
    idx, feat = random_voxels()
    conv = SubMConv3d(8, 16, 3)
    torch.nn.init.normal_(conv.bias)
    voxels = SparseVoxels.from_grid(idx[:, 1:], idx[:, 0])
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the raw spconv CPU kernel is wrong at some sites with >1 thread
    try:
        out = conv(feat, voxels)
        assert torch.get_num_threads() == 2  # the guard restores the caller's setting
    finally:
        torch.set_num_threads(previous)
    ref = dense_reference(idx, feat, conv.weight.detach(), conv.bias.detach())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_backward_on_cpu_matches_dense_conv3d_gradients():
    torch.manual_seed(1)
    idx, feat = random_voxels(1500, channels=4, seed=1)
    conv = SubMConv3d(4, 6, 3)
    voxels = SparseVoxels.from_grid(idx[:, 1:], idx[:, 0])
    upstream = torch.randn(len(idx), 6)

    x = feat.clone().requires_grad_()
    (conv(x, voxels) * upstream).sum().backward()

    x_ref = feat.clone().requires_grad_()
    w_ref = conv.weight.detach().clone().requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_()
    (dense_reference(idx, x_ref, w_ref, b_ref) * upstream).sum().backward()

    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, b_ref.grad, rtol=1e-4, atol=1e-4)


def test_gradcheck_in_double_precision():
    idx, feat = random_voxels(40, channels=1, seed=2, batch_size=1)
    idx[:, 1:] //= 4  # pack the voxels into a 5^3 block so most of them have neighbours
    idx = torch.unique(idx, dim=0)
    feat = feat[: len(idx)]
    voxels = SparseVoxels.from_grid(idx[:, 1:], idx[:, 0])
    conv = SubMConv3d(1, 2, 3).double()
    x = feat.double().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: _conv_with(conv, w, a, voxels), (x, weight), fast_mode=True)


def _conv_with(conv: SubMConv3d, weight: torch.Tensor, x: torch.Tensor, voxels: SparseVoxels):
    from spatiotemporal.layers.sparse_conv import _IndiceConvFunction

    pairs, pair_num = voxels.rulebook(conv.kernel_size)
    return _IndiceConvFunction.apply(x, weight, pairs, pair_num, True)


def test_rulebook_is_built_once_per_kernel_size():
    idx, feat = random_voxels(400, channels=3)
    voxels = SparseVoxels.from_grid(idx[:, 1:], idx[:, 0])
    assert voxels.rulebook(3)[0] is voxels.rulebook(3)[0]
    assert voxels.rulebook(5)[0].shape[1] == 125


def test_conditional_position_encoding_trains_on_cpu():
    idx, feat = random_voxels(600, channels=8, seed=3)
    voxels = SparseVoxels.from_grid(idx[:, 1:], idx[:, 0])
    cpe = SparseConvPE(8)
    out = cpe(feat, voxels)
    out.square().mean().backward()
    assert out.shape == feat.shape
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cpe.parameters())


def test_thread_guard_restores_the_thread_count_after_an_error():
    previous = torch.get_num_threads()
    try:
        with spconv_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == previous


def finishes_within(seconds: float, body) -> bool:
    """Run `body` in a daemon thread; whether it ended in time (a hang must fail, not stall the suite)."""
    import threading

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


def test_thread_guard_nests_in_one_thread():
    def nested():
        with spconv_threads(torch.device("cpu")), spconv_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 1

    assert finishes_within(10.0, nested)


def test_thread_guard_and_single_thread_in_two_threads_take_turns_without_deadlock():
    # One thread inside point_ops.single_thread enters the spconv guard while another thread is
    # entering the guard from outside: with two locks taken in opposite orders, each would wait
    # for the other's forever.
    import threading

    from spatiotemporal.layers.point_ops import single_thread

    inside = threading.Event()

    def ops_then_spconv():
        with single_thread():
            inside.set()
            threading.Event().wait(0.2)  # let the other thread reach the guard meanwhile
            with spconv_threads(torch.device("cpu")):
                pass

    def spconv_only():
        inside.wait()
        with spconv_threads(torch.device("cpu")):
            pass

    first = threading.Thread(target=ops_then_spconv, daemon=True)
    first.start()
    assert finishes_within(10.0, spconv_only)
    first.join(10.0)
    assert not first.is_alive()
