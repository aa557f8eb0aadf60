"""Normal estimation: every normal points to the side its surface was seen from, and no axis is
taken to be "up" (a camera-frame scan has y down and z forward; a fused room has whatever axes
its reconstruction gave it).

The references: the real camera-frame fragment (its sensor sits at the origin), a depth scan
ray-cast by open3d from a known sensor pose (the exact surface normals), and rooms sampled in
world coordinates whose floor, walls and ceiling must face into the room.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from spatiotemporal.io.points import estimate_normals, read_ply

FRAGMENT = "livingroom_fragment.ply"


def random_rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))  # a proper rotation, no reflection


def facing(normals: np.ndarray, points: np.ndarray, viewpoint) -> np.ndarray:
    """Whether each normal points to the viewpoint's side of its surface."""
    return ((np.asarray(viewpoint) - points) * normals).sum(1) > 0


# ---------------------------------------------------------------------------------------------
# Clouds in their sensor's frame: the sensor is the origin
# ---------------------------------------------------------------------------------------------


def test_the_camera_frame_fragment_faces_its_sensor(points_dir):
    """livingroom_fragment.ply is an RGB-D fragment in its camera's frame (y down, z forward):
    every surface in it was seen from the origin. Assuming z is up turned a quarter of them away."""
    cloud = read_ply(points_dir / FRAGMENT)
    normals = estimate_normals(cloud)
    assert normals.shape == cloud["coord"].shape and normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert facing(normals, cloud["coord"], (0, 0, 0)).all()


def depth_scan(eye, target, with_table: bool = True):
    """What a 60-degree depth camera at `eye` looking at `target` sees of a 5 x 4 x 2.6 m room
    (with a table in front of it): points and true normals, both in the camera's frame."""
    room = o3d.geometry.TriangleMesh.create_box(5.0, 4.0, 2.6)
    if with_table:
        room += o3d.geometry.TriangleMesh.create_box(1.2, 0.8, 0.75).translate((1.6, 1.3, 0.0))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room))
    rays = scene.create_rays_pinhole(fov_deg=60.0, center=target, eye=eye, up=(0, 0, 1), width_px=160, height_px=120)
    hits = scene.cast_rays(rays)
    rays = rays.numpy().reshape(-1, 6)
    t = hits["t_hit"].numpy().reshape(-1)
    seen = np.isfinite(t)
    points = rays[seen, :3] + t[seen, None] * rays[seen, 3:]
    truth = hits["primitive_normals"].numpy().reshape(-1, 3)[seen]
    truth *= np.where(facing(truth, points, eye), 1.0, -1.0)[:, None]  # the side the camera saw
    forward = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
    right = np.cross(forward, (0, 0, 1))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    to_camera = np.stack([right, down, forward])  # rows: the camera's x (right), y (down), z
    return (points - eye) @ to_camera.T, truth @ to_camera.T


def test_a_depth_scan_in_camera_frame_gets_the_surface_normals_facing_the_camera():
    points, truth = depth_scan(eye=np.array([4.6, 3.6, 1.5]), target=np.array([1.0, 0.5, 0.4]))
    normals = estimate_normals({"coord": points.astype(np.float32)})
    assert facing(normals, points, (0, 0, 0)).all()
    # The surface's own normal, but where local PCA blends two faces at an edge (0.3% here: the
    # table top's rim, whose neighbourhood takes in its side).
    assert ((normals * truth).sum(1) > 0).mean() > 0.99
    angle = np.degrees(np.arccos(np.clip((normals * truth).sum(1), -1.0, 1.0)))
    assert np.median(angle) < 1.0 and (angle < 10.0).mean() > 0.9


# ---------------------------------------------------------------------------------------------
# Clouds in world coordinates: a room faces into itself, in any pose
# ---------------------------------------------------------------------------------------------


def sampled_room(seed: int = 0, size=(5.0, 4.0, 2.6), per_m2: int = 1000):
    """Floor, ceiling and four walls of a closed room with its corner at the origin, sampled at
    random: points and inward normals."""
    rng = np.random.default_rng(seed)
    w, d, h = size
    faces = [  # corner, edge u, edge v, inward normal
        ((0, 0, 0), (w, 0, 0), (0, d, 0), (0, 0, 1)),
        ((0, 0, h), (w, 0, 0), (0, d, 0), (0, 0, -1)),
        ((0, 0, 0), (w, 0, 0), (0, 0, h), (0, 1, 0)),
        ((0, d, 0), (w, 0, 0), (0, 0, h), (0, -1, 0)),
        ((0, 0, 0), (0, d, 0), (0, 0, h), (1, 0, 0)),
        ((w, 0, 0), (0, d, 0), (0, 0, h), (-1, 0, 0)),
    ]
    points, normals = [], []
    for corner, u, v, inward in faces:
        count = int(per_m2 * np.linalg.norm(u) * np.linalg.norm(v))
        a = rng.random((count, 2))
        points.append(np.asarray(corner) + a[:, :1] * np.asarray(u) + a[:, 1:] * np.asarray(v))
        normals.append(np.tile(np.asarray(inward, dtype=np.float64), (count, 1)))
    return np.concatenate(points), np.concatenate(normals)


@pytest.mark.parametrize(
    "pose",
    [
        "corner at the origin, z up (ScanNet's axis-aligned scenes)",
        "rotated and far from the origin (a room of a building-sized scan)",
        "rotated around an origin inside the room (a reconstruction's first camera)",
    ],
)
def test_a_room_in_world_coordinates_faces_into_itself(pose):
    points, inward = sampled_room()
    rotation = random_rotation(3)
    if pose.startswith("rotated and far"):
        points, inward = (points + (30.0, -20.0, 2.0)) @ rotation.T, inward @ rotation.T
    elif pose.startswith("rotated around"):
        points, inward = (points - (1.5, 2.2, 1.1)) @ rotation.T, inward @ rotation.T
    normals = estimate_normals({"coord": points.astype(np.float32)})
    assert ((normals * inward).sum(1) > 0).all()
    angle = np.degrees(np.arccos(np.clip((normals * inward).sum(1), -1.0, 1.0)))
    assert np.median(angle) < 1.0


# ---------------------------------------------------------------------------------------------
# A known viewpoint, and points without a surface
# ---------------------------------------------------------------------------------------------


def test_a_given_viewpoint_decides_the_side_even_against_up():
    """A floor seen from below (a glass floor, or a scan flipped by its reconstruction) faces down."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.random((4000, 2)) * 2.0, np.zeros(4000)]
    normals = estimate_normals({"coord": floor}, viewpoint=(1.0, 1.0, -2.0))
    np.testing.assert_allclose(normals, np.tile([0.0, 0.0, -1.0], (len(floor), 1)), atol=1e-4)


def test_a_point_with_no_surface_around_it_faces_the_viewpoint():
    """open3d answers (0, 0, 1) where it has fewer than three points to fit a plane to; that is
    an axis, not a surface. Such a point faces the viewpoint instead."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.random((4000, 2)) * 2.0, np.zeros(4000)]
    lonely = np.array([[3.0, 4.0, 0.0], [-3.0, 1.0, 1.0], [-3.02, 1.0, 1.0]])  # one alone, one pair
    viewpoint = np.array([1.0, 1.0, -2.0])
    normals = estimate_normals({"coord": np.vstack([floor, lonely])}, viewpoint=viewpoint)
    towards = viewpoint - lonely
    np.testing.assert_allclose(normals[-3:], towards / np.linalg.norm(towards, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(normals[:-3], np.tile([0.0, 0.0, -1.0], (len(floor), 1)), atol=1e-4)
