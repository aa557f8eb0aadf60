"""Point transforms: Pointcept's grid sampling and augmentations, in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatiotemporal.data import point_transforms as T
from spatiotemporal.io.points import read_ply


@pytest.fixture(scope="module")
def livingroom(points_dir) -> dict:
    """The real 112,698-point fragment as tensors."""
    return T.to_tensors(read_ply(points_dir / "livingroom_fragment.ply"))


def small_cloud(n: int = 4000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 3))
    return T.to_tensors(
        {
            "coord": rng.uniform(0, [4.0, 3.0, 2.5], (n, 3)).astype(np.float32),
            "color": rng.uniform(40, 200, (n, 3)).astype(np.float32),
            "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
            "segment": np.arange(n, dtype=np.int64),  # a point's own index: tracks where it went
        }
    )


def voxel_ids(coord: np.ndarray, size: float) -> np.ndarray:
    """Reference voxel assignment: floor(coord / size), as Pointcept computes it."""
    grid = np.floor(coord / size).astype(np.int64)
    grid -= grid.min(0)
    key = np.ravel_multi_index(grid.T, grid.max(0) + 1)
    _, ids = np.unique(key, return_inverse=True)
    return ids.reshape(-1)


def test_train_grid_sample_keeps_exactly_one_point_per_occupied_voxel(livingroom):
    out = T.GridSample(0.05, "train", generator=torch.Generator().manual_seed(0))(livingroom)
    full = livingroom["coord"].numpy()
    ids = voxel_ids(full, 0.05)
    kept_ids = voxel_ids(np.concatenate([full, out["coord"].numpy()]), 0.05)[len(full) :]
    assert len(out["coord"]) == ids.max() + 1
    assert np.array_equal(np.sort(kept_ids), np.arange(ids.max() + 1))
    # `inverse` sends every full-cloud point to the sampled point of its own voxel.
    rep = out["grid_coord"][out["inverse"]].numpy()
    assert (rep == (np.floor(full / 0.05).astype(np.int64) - np.floor(full / 0.05).astype(np.int64).min(0))).all()


def test_train_grid_sample_picks_among_the_points_of_a_voxel_at_random():
    cloud = small_cloud()
    picks = [T.GridSample(0.5, "train", generator=torch.Generator().manual_seed(s))(cloud)["segment"] for s in range(3)]
    again = T.GridSample(0.5, "train", generator=torch.Generator().manual_seed(0))(cloud)["segment"]
    assert torch.equal(picks[0], again)
    assert not torch.equal(picks[0], picks[1])
    ids = voxel_ids(cloud["coord"].numpy(), 0.5)
    for pick in picks:
        assert sorted(ids[pick.numpy()]) == list(range(ids.max() + 1))


def test_test_grid_sample_fragments_cover_every_point_with_the_inverse_map(livingroom):
    fragments = T.GridSample(0.02, "test")(livingroom)
    n = len(livingroom["coord"])
    ids = voxel_ids(livingroom["coord"].numpy(), 0.02)
    assert len(fragments) == np.bincount(ids).max()
    covered = torch.cat([f["index"] for f in fragments]).unique()
    assert torch.equal(covered, torch.arange(n))
    for fragment in fragments[:3]:
        assert len(fragment["coord"]) == ids.max() + 1  # one point of every voxel
        assert torch.equal(fragment["coord"], livingroom["coord"][fragment["index"]])
        # Row inverse[i] of every fragment lies in point i's voxel.
        assert (ids[fragment["index"][fragment["inverse"]].numpy()] == ids).all()


def test_rotation_is_rigid_and_turns_normals_with_the_points():
    cloud = small_cloud(500)
    out = T.RandomRotate(angle=(0.5, 0.5), axis="z", p=1.0)(cloud)  # exactly +90 degrees
    exact = "donot_use_mm_for_euclid_dist"
    before = torch.cdist(cloud["coord"], cloud["coord"], compute_mode=exact)
    assert torch.allclose(torch.cdist(out["coord"], out["coord"], compute_mode=exact), before, atol=1e-5)
    assert torch.allclose(out["coord"][:, 2], cloud["coord"][:, 2])
    expected = torch.stack([-cloud["normal"][:, 1], cloud["normal"][:, 0], cloud["normal"][:, 2]], 1)
    assert torch.allclose(out["normal"], expected, atol=1e-6)
    about_origin = T.RandomRotate(angle=(1.0, 1.0), axis="z", center=(0, 0, 0), p=1.0)(cloud)
    assert torch.allclose(about_origin["coord"][:, :2], -cloud["coord"][:, :2], atol=1e-5)


def test_scale_flip_and_jitter():
    cloud = small_cloud(500)
    scaled = T.RandomScale((2.0, 2.0))(cloud)
    assert torch.allclose(scaled["coord"], cloud["coord"] * 2)
    flipped = T.RandomFlip(p=1.0)(cloud)
    assert torch.equal(flipped["coord"][:, :2], -cloud["coord"][:, :2])
    assert torch.equal(flipped["normal"][:, 2], cloud["normal"][:, 2])
    jittered = T.RandomJitter(sigma=0.01, clip=0.02, generator=torch.Generator().manual_seed(0))(cloud)
    delta = jittered["coord"] - cloud["coord"]
    assert delta.abs().max() <= 0.02 + 1e-6
    assert 0.007 < delta.std() < 0.011


def _reference_elastic(coord: np.ndarray, noise: np.ndarray, granularity: float, magnitude: float) -> np.ndarray:
    """Pointcept's elastic distortion written out in NumPy: zero-padded 3-tap box blur twice
    along each axis, then trilinear interpolation on the grid lo - g + i * g, zero outside."""
    for _ in range(2):
        for axis in range(3):
            padded = np.pad(noise, [(1, 1) if a == axis else (0, 0) for a in range(4)])
            noise = sum(np.take(padded, np.arange(k, k + noise.shape[axis]), axis=axis) for k in range(3)) / 3
    lo = coord.min(0)
    u = (coord - (lo - granularity)) / granularity
    i0 = np.floor(u).astype(int)
    f = u - i0
    out = np.zeros_like(coord, dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):
        idx = i0 + corner
        weight = np.prod(np.where(corner, f, 1 - f), axis=1)
        valid = ((idx >= 0) & (idx < noise.shape[:3])).all(1)
        val = np.zeros((len(coord), 3))
        val[valid] = noise[idx[valid, 0], idx[valid, 1], idx[valid, 2]]
        out += weight[:, None] * val
    return coord + out * magnitude


def test_elastic_distortion_matches_the_reference_formula():
    cloud = small_cloud(800)
    coord = cloud["coord"]
    dims = T.ElasticDistortion.grid_shape(coord, 0.2)
    noise = np.random.default_rng(1).normal(size=(*dims, 3)).astype(np.float32)
    ours = T.ElasticDistortion().distort(coord, 0.2, 0.4, noise=torch.from_numpy(noise))
    expected = _reference_elastic(coord.numpy().astype(np.float64), noise.astype(np.float64), 0.2, 0.4)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5)


def test_elastic_distortion_is_smooth():
    cloud = small_cloud(3000)
    out = T.ElasticDistortion(p=1.0, generator=torch.Generator().manual_seed(0))(cloud)
    displacement = out["coord"] - cloud["coord"]
    distance = torch.cdist(cloud["coord"], cloud["coord"])
    close = (distance < 0.05) & (distance > 0)
    i, j = close.nonzero(as_tuple=True)
    assert (displacement[i] - displacement[j]).norm(dim=1).mean() < 0.2 * displacement.norm(dim=1).mean()


def test_chromatic_auto_contrast_stretches_each_channel_to_full_range():
    cloud = small_cloud()
    out = T.ChromaticAutoContrast(p=1.0, blend_factor=1.0)(cloud)
    assert torch.allclose(out["color"].min(0).values, torch.zeros(3), atol=1e-3)
    assert torch.allclose(out["color"].max(0).values, torch.full((3,), 255.0), atol=1e-3)


def test_chromatic_translation_shifts_all_points_by_one_bounded_offset():
    cloud = small_cloud()
    out = T.ChromaticTranslation(p=1.0, ratio=0.05, generator=torch.Generator().manual_seed(3))(cloud)
    shift = out["color"] - cloud["color"]  # colors 40..200 never clip at this ratio
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-4)
    assert shift.abs().max() <= 255 * 0.05 + 1e-4


def test_chromatic_jitter_has_the_requested_std_and_stays_in_range():
    cloud = small_cloud()
    out = T.ChromaticJitter(p=1.0, std=0.02, generator=torch.Generator().manual_seed(0))(cloud)
    assert abs(float((out["color"] - cloud["color"]).std()) - 0.02 * 255) < 0.3
    assert out["color"].min() >= 0 and out["color"].max() <= 255


def test_sphere_crop_keeps_the_nearest_points_to_the_centre():
    cloud = small_cloud()
    out = T.SphereCrop(point_max=1000, mode="center")(cloud)
    coord = cloud["coord"].numpy()
    center = (coord.min(0) + coord.max(0)) / 2
    nearest = np.sort(np.argsort(((coord - center) ** 2).sum(1))[:1000])
    assert np.array_equal(out["segment"].numpy(), nearest)
    assert torch.equal(out["coord"], cloud["coord"][out["segment"]])  # keys stay aligned


def test_center_shift_centres_xy_and_puts_the_floor_at_zero():
    out = T.CenterShift(apply_z=True)(small_cloud())
    lo, hi = out["coord"].min(0).values, out["coord"].max(0).values
    assert torch.allclose((lo + hi)[:2] / 2, torch.zeros(2), atol=1e-6)
    assert float(lo[2]) == pytest.approx(0.0, abs=1e-6)


def test_normalize_color_maps_0_255_to_minus_one_one():
    cloud = {"coord": torch.zeros(2, 3), "color": torch.tensor([[0.0, 127.5, 255.0], [255.0, 0.0, 0.0]])}
    out = T.NormalizeColor()(cloud)
    assert torch.equal(out["color"], torch.tensor([[-1.0, 0.0, 1.0], [1.0, -1.0, -1.0]]))


def test_compose_accepts_numpy_and_is_reproducible_with_seeded_generators():
    rng = np.random.default_rng(0)
    cloud = {"coord": rng.uniform(0, 3, (3000, 3)).astype(np.float32), "color": rng.uniform(0, 255, (3000, 3)).astype(np.float32)}

    def pipeline(seed: int):
        g = torch.Generator().manual_seed(seed)
        return T.Compose([
            T.CenterShift(), T.RandomRotate(generator=g), T.RandomScale(generator=g), T.RandomFlip(generator=g),
            T.RandomJitter(generator=g), T.ElasticDistortion(generator=g), T.ChromaticAutoContrast(generator=g),
            T.ChromaticTranslation(generator=g), T.ChromaticJitter(generator=g), T.GridSample(0.05, generator=g),
            T.SphereCrop(1500, generator=g), T.NormalizeColor(),
        ])

    a, b, c = pipeline(0)(cloud), pipeline(0)(cloud), pipeline(1)(cloud)
    assert isinstance(a["coord"], torch.Tensor) and len(a["coord"]) == 1500
    assert torch.equal(a["coord"], b["coord"]) and torch.equal(a["color"], b["color"])
    assert not torch.equal(a["coord"], c["coord"])


def test_transforms_after_test_mode_grid_sampling_apply_to_every_fragment():
    cloud = small_cloud(2000)
    fragments = T.Compose([T.GridSample(0.5, "test"), T.NormalizeColor()])(cloud)
    assert isinstance(fragments, list) and len(fragments) > 1
    for fragment in fragments:
        assert torch.allclose(fragment["color"], cloud["color"][fragment["index"]] / 127.5 - 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_transforms_run_on_cuda_tensors(livingroom):
    cuda = {k: v.cuda() for k, v in livingroom.items()}
    cpu_fragments = T.GridSample(0.05, "test")(livingroom)
    gpu_fragments = T.GridSample(0.05, "test")(cuda)
    assert len(cpu_fragments) == len(gpu_fragments)
    assert torch.equal(cpu_fragments[0]["index"], gpu_fragments[0]["index"].cpu())
    out = T.Compose([T.RandomRotate(), T.ElasticDistortion(), T.ChromaticJitter(), T.SphereCrop(50000)])(cuda)
    assert out["coord"].is_cuda and len(out["coord"]) == 50000
