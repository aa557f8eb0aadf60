"""Point operators: exact kNN, sampling, pooling, interpolation and curve serialization."""

from __future__ import annotations

import threading

import numpy as np
import open3d as o3d
import pytest
import torch

from spatiotemporal.layers import point_ops as ops
from spatiotemporal.layers.serialization import (
    hilbert_decode,
    hilbert_encode,
    serialize,
    z_order_decode,
    z_order_encode,
)


def brute_knn(query: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cdist(query.double(), support.double()).topk(k, largest=False).values


@pytest.fixture(scope="module")
def livingroom(points_dir) -> torch.Tensor:
    cloud = o3d.io.read_point_cloud(str(points_dir / "livingroom_fragment.ply"))
    return torch.from_numpy(np.asarray(cloud.points)).float()


def test_offset_batch_round_trip():
    offset = torch.tensor([3, 7, 8])
    batch = ops.offset_to_batch(offset)
    assert batch.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert ops.batch_to_offset(batch).tolist() == [3, 7, 8]
    assert ops.offset_to_counts(offset).tolist() == [3, 4, 1]


@pytest.mark.parametrize("backend", ["torch", "open3d"])
def test_knn_is_exact_on_a_batch(backend):
    torch.manual_seed(0)
    # torch: 5000 points force the z-order chunked search; the 700-point cloud uses brute force.
    points = torch.cat([torch.rand(5000, 3) * torch.tensor([4.0, 3.0, 0.5]), torch.rand(700, 3)])
    offset = torch.tensor([5000, 5700])
    index, dist = ops.knn_query(16, points, offset, backend=backend)
    for s0, s1 in [(0, 5000), (5000, 5700)]:
        torch.testing.assert_close(dist[s0:s1].double(), brute_knn(points[s0:s1], points[s0:s1], 16), atol=1e-6, rtol=0)
        assert ((index[s0:s1] >= s0) & (index[s0:s1] < s1)).all()
    # The returned indices are the points at the returned distances.
    torch.testing.assert_close((points[index] - points[:, None]).norm(dim=-1), dist, atol=1e-6, rtol=0)
    assert (index[:, 0] == torch.arange(5700)).all()  # every point is its own nearest


@pytest.mark.parametrize("backend", ["torch", "open3d"])
def test_knn_between_different_query_and_support_clouds(backend):
    torch.manual_seed(1)
    support = torch.randn(5000, 3)
    query = torch.randn(1500, 3) * 1.5  # some queries lie outside the support's hull
    index, dist = ops.knn_query(3, support, torch.tensor([5000]), query, torch.tensor([1500]), backend=backend)
    torch.testing.assert_close(dist.double(), brute_knn(query, support, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "open3d"])
def test_knn_matches_open3d_kdtree_on_the_real_scan(livingroom, backend):
    points = livingroom[:8000]
    index, dist = ops.knn_query(16, points, torch.tensor([len(points)]), backend=backend)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
    tree = o3d.geometry.KDTreeFlann(cloud)
    for i in range(0, len(points), 997):
        _, idx, d2 = tree.search_knn_vector_3d(cloud.points[i], 16)
        np.testing.assert_allclose(dist[i].double().numpy() ** 2, np.asarray(d2), atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "open3d"])
def test_knn_pads_small_clouds_with_their_farthest_neighbour(backend):
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 10, 10], [11, 10, 10]])
    index, dist = ops.knn_query(4, points, torch.tensor([3, 5]), backend=backend)
    assert index[0].tolist() == [0, 1, 2, 2]
    assert dist[0].tolist() == [0.0, 1.0, 3.0, 3.0]
    assert index[3].tolist() == [3, 4, 4, 4]


def test_knn_rejects_an_offset_that_does_not_cover_the_points():
    with pytest.raises(ValueError, match="offset"):
        ops.knn_query(4, torch.rand(10, 3), torch.tensor([4, 9]))


def naive_fps(points: torch.Tensor, m: int, first: int) -> list[int]:
    picks, dist = [first], torch.full((len(points),), float("inf"))
    for _ in range(m - 1):
        dist = torch.minimum(dist, ((points - points[picks[-1]]) ** 2).sum(1))
        picks.append(int(dist.argmax()))
    return picks


@pytest.mark.parametrize("backend", ["open3d", "torch"])
def test_farthest_point_sampling_matches_the_textbook_loop_per_cloud(backend):
    torch.manual_seed(2)
    points = torch.rand(900, 3)
    offset, new_offset = torch.tensor([400, 900]), torch.tensor([50, 150])
    picks = ops.farthest_point_sampling(points, offset, new_offset, backend=backend)
    for (s0, s1), (m0, m1) in [((0, 400), (0, 50)), ((400, 900), (50, 150))]:
        cloud = points[s0:s1]
        first = int((cloud - cloud.mean(0)).norm(dim=1).argmax())
        assert (picks[m0:m1] - s0).tolist() == sorted(naive_fps(cloud, m1 - m0, first))


@pytest.mark.parametrize("backend", ["open3d", "torch"])
def test_farthest_point_sampling_repeats_the_first_point_when_a_cloud_has_too_few_distinct_locations(backend):
    # Cloud 0: six copies of the origin and two other points (3 locations, 4 picks asked);
    # cloud 1: ten copies of one point (1 location, 3 picks asked).
    points = torch.cat([torch.tensor([[0.0, 0, 0]] * 6 + [[1.0, 0, 0], [0.0, 1, 0]]), torch.full((10, 3), 2.0)])
    offset, new_offset = torch.tensor([8, 18]), torch.tensor([4, 7])
    picks = ops.farthest_point_sampling(points, offset, new_offset, backend=backend)
    assert picks.tolist() == [0, 0, 6, 7, 8, 8, 8]  # exactly what new_offset promises, per cloud
    first = int((points[:8] - points[:8].mean(0)).norm(dim=1).argmax())
    assert picks[:4].tolist() == sorted(naive_fps(points[:8], 4, first))


def test_farthest_point_sampling_backends_agree_on_a_training_sized_cloud():
    torch.manual_seed(4)
    points = torch.rand(8000, 3) * torch.tensor([6.0, 5.0, 2.5])
    offset, new_offset = torch.tensor([3000, 8000]), torch.tensor([750, 2000])
    cpu = ops.farthest_point_sampling(points, offset, new_offset, backend="open3d")
    assert torch.equal(cpu, ops.farthest_point_sampling(points, offset, new_offset, backend="torch"))
    assert torch.equal(cpu, ops.farthest_point_sampling(points, offset, new_offset))  # auto: open3d on CPU


@pytest.mark.parametrize("backend", ["open3d", "torch"])
def test_farthest_point_sampling_ignores_storage_order(backend):
    torch.manual_seed(3)
    points = torch.rand(500, 3)
    perm = torch.randperm(500)
    a = points[ops.farthest_point_sampling(points, torch.tensor([500]), torch.tensor([64]), backend=backend)]
    b = points[perm][ops.farthest_point_sampling(points[perm], torch.tensor([500]), torch.tensor([64]), backend=backend)]
    # The same points, each set in its own storage order.
    assert set(map(tuple, a.tolist())) == set(map(tuple, b.tolist())) and len(a) == 64


def test_grid_pool_averages_coordinates_and_max_pools_features():
    coord = torch.tensor([[0.01, 0.01, 0.01], [0.04, 0.02, 0.03], [0.12, 0.0, 0.0], [5.0, 5.0, 5.0]])
    feat = torch.tensor([[1.0, -1.0], [3.0, -5.0], [2.0, 2.0], [7.0, 7.0]])
    new_coord, new_feat, new_offset, cluster = ops.grid_pool(coord, feat, torch.tensor([3, 4]), 0.1)
    assert new_offset.tolist() == [2, 3]
    assert cluster.tolist() == [0, 0, 1, 2]
    torch.testing.assert_close(new_coord[0], torch.tensor([0.025, 0.015, 0.02]))
    assert new_feat.tolist() == [[3.0, -1.0], [2.0, 2.0], [7.0, 7.0]]


def test_interpolation_weights_by_inverse_distance():
    src = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    feat = torch.tensor([[1.0], [2.0], [3.0], [100.0]])
    dst = torch.tensor([[0.25, 0.0, 0.0]])
    out = ops.interpolate(src, feat, torch.tensor([4]), dst, torch.tensor([1]), k=3)
    d = torch.tensor([0.25, 0.75, (0.25**2 + 1) ** 0.5])
    w = (1 / d) / (1 / d).sum()
    torch.testing.assert_close(out[0, 0], (w * torch.tensor([1.0, 2.0, 3.0])).sum())
    nearest = ops.interpolate(src, feat, torch.tensor([4]), dst, torch.tensor([1]), k=1)
    assert nearest.tolist() == [[1.0]]


def test_z_order_interleaves_bits_x_first():
    grid = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 3, 3], [2, 0, 1]])
    assert z_order_encode(grid, depth=2).tolist() == [4, 2, 1, 63, 33]
    assert torch.equal(z_order_decode(z_order_encode(grid, 2), 2), grid)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_curve_visits_every_cell_once_in_face_adjacent_steps(depth):
    n = 1 << depth
    axes = torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij")
    grid = torch.stack(axes, -1).reshape(-1, 3)
    code = hilbert_encode(grid, depth)
    assert sorted(code.tolist()) == list(range(n**3))
    path = grid[torch.argsort(code)]
    assert ((path[1:] - path[:-1]).abs().sum(1) == 1).all()
    assert torch.equal(hilbert_decode(code, depth), grid)


def test_serialize_keeps_clouds_apart_and_rejects_out_of_range_grids():
    grid = torch.tensor([[7, 7, 7], [0, 0, 0]])
    code = serialize(grid, torch.tensor([0, 1]), order="hilbert")
    assert code[0] < code[1]
    with pytest.raises(ValueError, match="grid coordinates"):
        hilbert_encode(torch.tensor([[-1, 0, 0]]), 4)


def test_an_unknown_backend_is_refused_by_knn_and_farthest_point_sampling_alike():
    points, offset = torch.rand(10, 3), torch.tensor([10])
    with pytest.raises(ValueError, match="backend must be 'auto', 'open3d' or 'torch', got 'pointops'"):
        ops.knn_query(4, points, offset, backend="pointops")
    with pytest.raises(ValueError, match="backend must be 'auto', 'open3d' or 'torch', got 'pointops'"):
        ops.farthest_point_sampling(points, offset, torch.tensor([3]), backend="pointops")


def test_single_thread_blocks_in_two_threads_take_turns_and_leave_the_thread_count_as_it_was():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    a_inside, release_a, b_inside = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a():
        with ops.single_thread():
            seen["a"] = torch.get_num_threads()
            a_inside.set()
            release_a.wait(10)

    def b():
        a_inside.wait(10)
        with ops.single_thread():
            seen["b"] = torch.get_num_threads()
            b_inside.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    try:
        for t in threads:
            t.start()
        assert a_inside.wait(10)
        assert not b_inside.wait(0.3)  # b's block waits for a's to end
        release_a.set()
        for t in threads:
            t.join(10)
        assert seen == {"a": 1, "b": 1}
        fresh: list[int] = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        # This thread and a thread started afterwards both have the two threads set before.
        assert (torch.get_num_threads(), fresh) == (2, [2])
    finally:
        release_a.set()
        torch.set_num_threads(previous)


def test_single_thread_blocks_nest_in_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ops.single_thread():
            with ops.single_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
