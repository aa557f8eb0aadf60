"""Synthetic ScanNet: rooms written in ScanNet v2's raw scene format.

A room is a floor and four walls with doors and windows, furnished by room type (bedroom, living
room, kitchen, bathroom, office) plus a couple of pieces from other types so that every benchmark
class appears often. Every part is a surface sampled on a jittered grid at `spacing` (2 cm, about
the vertex spacing of ScanNet's vh_clean_2 meshes), colored by class with per-object and per-point
noise, then degraded as a scan is: faces against walls and floor vanish, solid furniture hides
what is behind and under it, walls stop below the ceiling at a ragged height, random holes punch
through, and coordinates get sensor noise.

Classes are separable by shape, height and size, with class-correlated colors, so small models
can learn them in minutes; the ignore classes (pillows, nightstands, boxes, lamps, tvs,
whiteboards) and unannotated patches keep the task honest.

Files per scene, as ScanNet writes them:
`{scene}_vh_clean_2.ply` (float x y z, uchar red green blue alpha),
`{scene}_vh_clean_2.labels.ply` (the same plus ushort `label` = nyu40 id, 0 unannotated),
`{scene}_vh_clean_2.0.010000.segs.json` (`segIndices` per vertex) and
`{scene}.aggregation.json` (`segGroups`: objects as lists of segments with a raw category).
Output depends only on (seed, scene index).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spatiotemporal.data.scannet import category_nyu40
from spatiotemporal.io.points import (
    SCANNET_AGGREGATION_SUFFIX,
    SCANNET_LABELS_SUFFIX,
    SCANNET_MESH_SUFFIX,
    SCANNET_SEGS_SUFFIX,
    write_ply,
)

ROOM_TYPES = ("bedroom", "living", "kitchen", "bathroom", "office")

# Base colors per raw category (RGB 0..255): correlated with the class, never unique to it.
BASE_COLORS: dict[str, tuple[int, int, int]] = {
    "wall": (222, 216, 200),
    "floor": (150, 112, 76),
    "door": (136, 92, 56),
    "window": (196, 214, 228),
    "curtain": (150, 60, 60),
    "picture": (120, 120, 120),
    "table": (168, 126, 84),
    "coffee table": (120, 84, 56),
    "desk": (200, 190, 170),
    "chair": (70, 70, 82),
    "office chair": (40, 40, 46),
    "couch": (96, 108, 140),
    "bed": (214, 210, 220),
    "cabinet": (176, 136, 92),
    "kitchen cabinet": (230, 230, 224),
    "file cabinet": (150, 152, 156),
    "bookshelf": (112, 80, 52),
    "counter": (84, 84, 92),
    "refrigerator": (226, 228, 232),
    "toilet": (242, 242, 240),
    "sink": (236, 238, 240),
    "bathtub": (240, 240, 236),
    "shower curtain": (180, 210, 220),
    "ottoman": (130, 90, 120),
    "trash can": (60, 90, 70),
    "pillow": (236, 236, 230),
    "nightstand": (120, 86, 60),
    "box": (176, 146, 104),
    "lamp": (230, 220, 170),
    "tv": (24, 24, 28),
    "whiteboard": (246, 246, 246),
}

STRUCTURE = ("wall", "floor")


@dataclass(frozen=True)
class SceneSpec:
    spacing: float = 0.02  # metres between neighbouring samples
    sensor_noise: float = 0.004  # std of coordinate noise, metres
    holes: tuple[int, int] = (3, 8)  # occlusion holes per scene
    unannotated: float = 0.04  # fraction of structure segments left unlabeled
    segment_size: float = 0.4  # over-segmentation cell, metres


@dataclass
class Scene:
    """The vertices and annotation of one synthetic scene."""

    coord: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) uint8
    nyu40: np.ndarray  # (N,) int64, 0 = unannotated
    instance: np.ndarray  # (N,) int64, -1 = unannotated
    segment: np.ndarray  # (N,) int64 over-segmentation ids (ScanNet's segIndices)
    categories: list[str] = field(default_factory=list)  # raw category per instance id


# --------------------------------------------------------------------------- surface sampling


def _grid(len_a: float, len_b: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified samples of [0, len_a] x [0, len_b]: one jittered point per spacing-sized cell."""
    na, nb = max(1, round(len_a / spacing)), max(1, round(len_b / spacing))
    a, b = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    cells = np.stack([a.ravel(), b.ravel()], 1) + rng.random((na * nb, 2))
    return cells * np.array([len_a / na, len_b / nb])


def _rect(origin, u, v, spacing, rng) -> np.ndarray:
    """Samples of the parallelogram origin + s*u + t*v, s, t in [0, 1]."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    st = _grid(np.linalg.norm(u), np.linalg.norm(v), spacing, rng)
    st = st / np.array([max(np.linalg.norm(u), 1e-9), max(np.linalg.norm(v), 1e-9)])
    return np.asarray(origin, float) + st[:, :1] * u + st[:, 1:] * v


def _box(x0, x1, y0, y1, z0, z1, spacing, rng, skip: str = "b") -> np.ndarray:
    """Faces of an axis-aligned box; `skip` drops faces: b(ottom) t(op) l(-x) r(+x) f(-y) k(+y)."""
    dx, dy, dz = (x1 - x0, 0, 0), (0, y1 - y0, 0), (0, 0, z1 - z0)
    faces = {
        "b": ((x0, y0, z0), dx, dy),
        "t": ((x0, y0, z1), dx, dy),
        "l": ((x0, y0, z0), dy, dz),
        "r": ((x1, y0, z0), dy, dz),
        "f": ((x0, y0, z0), dx, dz),
        "k": ((x0, y1, z0), dx, dz),
    }
    parts = [_rect(o, u, v, spacing, rng) for name, (o, u, v) in faces.items() if name not in skip]
    return np.concatenate(parts)


def _cylinder(x, y, r, z0, z1, spacing, rng, top: bool = True) -> np.ndarray:
    at = _grid(2 * math.pi * r, z1 - z0, spacing, rng)
    angle = at[:, 0] / r
    side = np.stack([x + r * np.cos(angle), y + r * np.sin(angle), z0 + at[:, 1]], 1)
    if not top:
        return side
    return np.concatenate([side, _disk(x, y, r, z1, spacing, rng)])


def _disk(x, y, r, z, spacing, rng, inner: float = 0.0) -> np.ndarray:
    square = _grid(2 * r, 2 * r, spacing, rng) - r
    radius = np.linalg.norm(square, axis=1)
    square = square[(radius <= r) & (radius >= inner)]
    return np.column_stack([square[:, 0] + x, square[:, 1] + y, np.full(len(square), z)])


def _wavy(width, z0, z1, amplitude, period, spacing, rng) -> np.ndarray:
    """A hanging fabric sheet along x at y ~ 0 with folds of the given amplitude."""
    xz = _grid(width, z1 - z0, spacing, rng)
    y = amplitude * np.sin(2 * math.pi * xz[:, 0] / period)
    return np.column_stack([xz[:, 0] - width / 2, y, xz[:, 1] + z0])


# ------------------------------------------------------------------------------ the builder


@dataclass
class _Placed:
    category: str
    center: np.ndarray  # (2,) world xy
    yaw: float
    size: tuple[float, float, float]  # width (local x), depth (local y), height
    solid: bool  # hides what is inside its box (floor under it, wall behind it)
    wall: int | None  # the wall its back touches
    instances: list[int] = field(default_factory=list)  # the objects built at this spot


class _Room:
    def __init__(self, rng: np.random.Generator, spec: SceneSpec):
        self.rng, self.spec = rng, spec
        self.width = rng.uniform(3.6, 6.5)
        self.length = rng.uniform(3.2, 5.5)
        self.height = rng.uniform(2.4, 2.8)
        self.points: list[np.ndarray] = []
        self.colors: list[np.ndarray] = []
        self.instance_of: list[np.ndarray] = []
        self.categories: list[str] = []
        self.placed: list[_Placed] = []
        self.reserved: list[np.ndarray] = []  # (xmin, ymin, xmax, ymax) footprints
        self.openings: list[tuple[int, float, float, float, float]] = []  # wall, t0, t1, z0, z1

    # ---- walls: 0 at y=0, 1 at x=W, 2 at y=L, 3 at x=0; `out` is the outward normal
    def wall_frame(self, k: int):
        w, l = self.width, self.length
        origin, tangent, out, length = {
            0: ((0, 0), (1, 0), (0, -1), w),
            1: ((w, 0), (0, 1), (1, 0), l),
            2: ((w, l), (-1, 0), (0, 1), w),
            3: ((0, l), (0, -1), (-1, 0), l),
        }[k]
        return np.array(origin, float), np.array(tangent, float), np.array(out, float), length

    def on_wall(self, k: int, tzs: np.ndarray) -> np.ndarray:
        """(t along wall, z, s outward) -> world xyz."""
        origin, tangent, out, _ = self.wall_frame(k)
        xy = origin + tzs[:, :1] * tangent + tzs[:, 2:3] * out
        return np.column_stack([xy, tzs[:, 1]])

    # ---- colors and instances
    def color_for(self, category: str, n: int, base=None, spread: float = 18.0) -> np.ndarray:
        base = np.asarray(base if base is not None else BASE_COLORS[category], float)
        instance = base + self.rng.normal(0, spread, 3)
        return instance + self.rng.normal(0, 7.0, (n, 3))

    def add(self, category: str, parts: list[tuple[np.ndarray, np.ndarray | None]]) -> int:
        """Add one object made of (points, colors) parts; colors None = the category's color."""
        instance = len(self.categories)
        self.categories.append(category)
        object_color = self.color_for(category, 1)[0]
        for points, colors in parts:
            if len(points) == 0:
                continue
            if colors is None:
                colors = object_color + self.rng.normal(0, 7.0, (len(points), 3))
            self.points.append(points)
            self.colors.append(np.broadcast_to(colors, points.shape).astype(np.float32))
            self.instance_of.append(np.full(len(points), instance, np.int64))
        return instance

    # ---- placement
    def _footprint(self, center, yaw, w, d) -> np.ndarray:
        c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
        hx, hy = (w * c + d * s) / 2, (w * s + d * c) / 2
        return np.array([center[0] - hx, center[1] - hy, center[0] + hx, center[1] + hy])

    def _free(self, box: np.ndarray) -> bool:
        if box[0] < 0.005 or box[1] < 0.005 or box[2] > self.width - 0.005 or box[3] > self.length - 0.005:
            return False
        return not any(
            box[0] < r[2] and r[0] < box[2] and box[1] < r[3] and r[1] < box[3] for r in self.reserved
        )

    def place(self, category, w, d, h, against_wall=True, solid=False, near=None, tries=60):
        """Find a free spot: back against a random wall, or free-standing (near `near` if
        given); returns a _Placed or None."""
        for _ in range(tries):
            if against_wall:
                k = int(self.rng.integers(4))
                origin, tangent, out, length = self.wall_frame(k)
                if length < w + 0.1:
                    continue
                t = self.rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
                center = origin + t * tangent - out * (d / 2 + 0.01)
                yaw = math.atan2(-out[0], out[1])  # local +y (the back) points out of the room
            else:
                k = None
                if near is not None:
                    center = np.asarray(near, float) + self.rng.normal(0, 0.6, 2)
                else:
                    center = np.array(
                        [self.rng.uniform(0.8, self.width - 0.8), self.rng.uniform(0.8, self.length - 0.8)]
                    )
                yaw = self.rng.integers(4) * math.pi / 2 + self.rng.normal(0, 0.12)
            box = self._footprint(center, yaw, w, d)
            if self._free(box):
                self.reserved.append(box)
                placed = _Placed(category, center, yaw, (w, d, h), solid, k)
                self.placed.append(placed)
                return placed
        return None

    def put(self, placed: _Placed, category: str, parts):
        """Add parts built in the object's local frame (origin at the footprint centre)."""
        c, s = math.cos(placed.yaw), math.sin(placed.yaw)
        rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        offset = np.array([placed.center[0], placed.center[1], 0.0])
        world = [(p @ rotation.T + offset, col) for p, col in parts]
        instance = self.add(category, world)
        placed.instances.append(instance)
        return instance

    def local_to_world(self, placed: _Placed, xy) -> np.ndarray:
        c, s = math.cos(placed.yaw), math.sin(placed.yaw)
        return placed.center + np.array([c * xy[0] - s * xy[1], s * xy[0] + c * xy[1]])


# ------------------------------------------------------------------------ structure builders


def _build_structure(room: _Room) -> None:
    rng, sp = room.rng, room.spec.spacing
    # Doors (1-2) and windows (1-3) claim wall intervals first.
    for category, count, width, z0, z1 in (
        ("door", rng.integers(1, 3) if room.width * room.length > 12 else 1, (0.8, 0.95), (0.0, 0.0), (2.0, 2.12)),
        ("window", rng.integers(1, 4), (0.7, 1.5), (0.8, 1.05), (1.9, 2.2)),
    ):
        for _ in range(int(count)):
            for _attempt in range(30):
                k = int(rng.integers(4))
                length = room.wall_frame(k)[3]
                wdt = rng.uniform(*width)
                if length < wdt + 0.6:
                    continue
                t0 = rng.uniform(0.3, length - wdt - 0.3)
                if any(o[0] == k and t0 < o[2] + 0.3 and o[1] < t0 + wdt + 0.3 for o in room.openings):
                    continue
                lo, hi = rng.uniform(*z0), rng.uniform(*z1)
                room.openings.append((k, t0, t0 + wdt, lo, hi))
                _add_opening(room, category, k, t0, t0 + wdt, lo, hi)
                break
    # Floor.
    floor = _rect((0, 0, 0), (room.width, 0, 0), (0, room.length, 0), sp, rng)
    floor_color = BASE_COLORS["floor"] if rng.random() < 0.6 else (176, 176, 170)
    room.add("floor", [(floor, room.color_for("floor", len(floor), floor_color, spread=25))])
    # Walls, each a separate object (as ScanNet annotates them), minus the openings, up to a
    # ragged scan height: the sensor rarely reaches the ceiling.
    wall_color = room.color_for("wall", 1, spread=14)[0]
    for k in range(4):
        length = room.wall_frame(k)[3]
        tz = _grid(length, room.height, sp, rng)
        top = room.height - 0.35 * (1 + np.sin(tz[:, 0] * rng.uniform(1, 3) + rng.uniform(0, 6))) * rng.random()
        keep = tz[:, 1] <= top
        for wall, t0, t1, z0, z1 in room.openings:
            if wall == k:
                keep &= ~((tz[:, 0] > t0) & (tz[:, 0] < t1) & (tz[:, 1] > z0) & (tz[:, 1] < z1))
        tz = tz[keep]
        points = room.on_wall(k, np.column_stack([tz, np.zeros(len(tz))]))
        room.add("wall", [(points, wall_color + rng.normal(0, 6, (len(points), 3)))])


def _add_opening(room: _Room, category: str, k: int, t0, t1, z0, z1) -> None:
    rng, sp = room.rng, room.spec.spacing
    recess = 0.05 if category == "door" else rng.uniform(0.08, 0.14)
    # The panel (door leaf or glass) sits back in the opening; glass returns few samples.
    tz = _grid(t1 - t0, z1 - z0, sp * (1.0 if category == "door" else 1.8), rng) + (t0, z0)
    panel = room.on_wall(k, np.column_stack([tz, np.full(len(tz), recess)]))
    # The reveal: the opening's sides (and top, and sill for windows) between wall and panel.
    reveal = []
    for t in (t0, t1):
        zs = _grid(z1 - z0, recess, sp, rng)
        reveal.append(np.column_stack([np.full(len(zs), t), zs[:, 0] + z0, zs[:, 1]]))
    for z, present in ((z1, True), (z0, category == "window")):
        if present:
            ts = _grid(t1 - t0, recess, sp, rng)
            reveal.append(np.column_stack([ts[:, 0] + t0, np.full(len(ts), z), ts[:, 1]]))
    if category == "window":
        # A sill that sticks out into the room.
        ts = _grid(t1 - t0 + 0.1, 0.08, sp, rng)
        reveal.append(np.column_stack([ts[:, 0] + t0 - 0.05, np.full(len(ts), z0), -ts[:, 1]]))
    reveal_points = room.on_wall(k, np.concatenate(reveal))
    room.add(category, [(panel, None), (reveal_points, None)])
    if category == "window" and rng.random() < 0.75:
        _add_curtain(room, k, t0, t1, z0, z1)


def _add_curtain(room: _Room, k, t0, t1, z0, z1) -> None:
    rng, sp = room.rng, room.spec.spacing
    bottom = rng.choice([0.05, z0 - 0.1])
    top = min(z1 + 0.15, room.height - 0.05)
    color = np.clip(np.array(BASE_COLORS["curtain"]) + rng.normal(0, 45, 3), 20, 240)
    # One or two panels, drawn partly open, hanging 10 cm into the room.
    for side in ((0,) if rng.random() < 0.4 else (0, 1)):
        width = rng.uniform(0.35, 0.6) * (t1 - t0 + 0.3)
        sheet = _wavy(width, bottom, top, 0.035, rng.uniform(0.12, 0.2), sp, rng)
        t = (t0 - 0.15 + width / 2) if side == 0 else (t1 + 0.15 - width / 2)
        tzs = np.column_stack([sheet[:, 0] + t, sheet[:, 2], -0.1 - sheet[:, 1]])
        points = room.on_wall(k, tzs)
        room.add("curtain", [(points, room.color_for("curtain", len(points), color, spread=6))])


def _add_wall_decor(room: _Room, category: str, w, h, zc) -> None:
    """Pictures and whiteboards: thin slabs hung on a wall away from openings."""
    rng, sp = room.rng, room.spec.spacing
    for _ in range(20):
        k = int(rng.integers(4))
        length = room.wall_frame(k)[3]
        if length < w + 0.4:
            continue
        t0 = rng.uniform(0.2, length - w - 0.2)
        if any(o[0] == k and t0 < o[2] + 0.1 and o[1] < t0 + w + 0.1 for o in room.openings):
            continue
        room.openings.append((k, t0, t0 + w, zc - h / 2, zc + h / 2))
        thick = 0.025
        front = _grid(w, h, sp, rng) + (t0, zc - h / 2)
        parts = [np.column_stack([front, np.full(len(front), -thick)])]
        for t in (t0, t0 + w):  # the two side edges of the slab
            zd = _grid(h, thick, sp, rng)
            parts.append(np.column_stack([np.full(len(zd), t), zd[:, 0] + zc - h / 2, -zd[:, 1]]))
        for z in (zc - h / 2, zc + h / 2):  # bottom and top edges
            td = _grid(w, thick, sp, rng)
            parts.append(np.column_stack([td[:, 0] + t0, np.full(len(td), z), -td[:, 1]]))
        points = room.on_wall(k, np.concatenate(parts))
        if category == "picture":
            # Pictures are many-colored; their mean is not the class's, their frame is.
            n = len(points)
            colors = rng.uniform(20, 235, (1, 3)) + rng.normal(0, 40, (n, 3))
            room.add("picture", [(points, colors)])
        else:
            room.add(category, [(points, None)])
        return


# ------------------------------------------------------------------------ furniture builders


def _legs(w, d, h, t, sp, rng, inset=0.03):
    return [
        _box(x - t / 2, x + t / 2, y - t / 2, y + t / 2, 0, h, sp, rng, skip="bt")
        for x in (-w / 2 + inset, w / 2 - inset)
        for y in (-d / 2 + inset, d / 2 - inset)
    ]


def _table(room, coffee=False, near=None):
    rng, sp = room.rng, room.spec.spacing
    if coffee:
        w, d, h = rng.uniform(0.9, 1.2), rng.uniform(0.5, 0.65), rng.uniform(0.4, 0.48)
    else:
        w, d, h = rng.uniform(1.0, 1.7), rng.uniform(0.75, 0.95), rng.uniform(0.72, 0.77)
    placed = room.place("table", w, d, h, against_wall=False, near=near)
    if placed is None:
        return None
    top = _box(-w / 2, w / 2, -d / 2, d / 2, h - 0.04, h, sp, rng, skip="")
    parts = [(top, None)] + [(leg, None) for leg in _legs(w, d, h - 0.04, 0.05, sp, rng)]
    room.put(placed, "coffee table" if coffee else "table", parts)
    return placed


def _chair(room, near=None, facing=None, against_wall=False):
    rng, sp = room.rng, room.spec.spacing
    w, d = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.5)
    seat, back = rng.uniform(0.42, 0.48), rng.uniform(0.82, 0.95)
    placed = room.place("chair", w, d, back, against_wall=against_wall, near=near)
    if placed is None:
        return
    if facing is not None:  # turn the chair's front (-y) towards `facing`
        delta = np.asarray(facing) - placed.center
        placed.yaw = math.atan2(delta[0], -delta[1])
    parts = [
        _box(-w / 2, w / 2, -d / 2, d / 2, seat - 0.05, seat, sp, rng, skip=""),
        _box(-w / 2, w / 2, d / 2 - 0.05, d / 2, seat, back, sp, rng, skip=""),
        *_legs(w, d, seat - 0.05, 0.035, sp, rng),
    ]
    category = "office chair" if rng.random() < 0.4 else "chair"
    room.put(placed, category, [(p, None) for p in parts])


def _table_with_chairs(room, coffee=False):
    placed = _table(room, coffee=coffee)
    if placed is not None and not coffee:
        for _ in range(int(room.rng.integers(2, 5))):
            _chair(room, near=placed.center, facing=placed.center)
    return placed


def _desk(room):
    rng, sp = room.rng, room.spec.spacing
    w, d, h = rng.uniform(1.1, 1.6), rng.uniform(0.6, 0.72), rng.uniform(0.73, 0.77)
    placed = room.place("desk", w, d, h, solid=False)
    if placed is None:
        return
    ped = rng.uniform(0.38, 0.45)
    side = rng.choice([-1, 1])
    px0, px1 = (w / 2 - ped, w / 2) if side > 0 else (-w / 2, -w / 2 + ped)
    ox0, ox1 = (-w / 2, -w / 2 + 0.03) if side > 0 else (w / 2 - 0.03, w / 2)
    parts = [
        (_box(-w / 2, w / 2, -d / 2, d / 2, h - 0.03, h, sp, rng, skip=""), None),
        (_box(px0, px1, -d / 2 + 0.02, d / 2, 0, h - 0.03, sp, rng, skip="bt"), None),
        (_box(ox0, ox1, -d / 2 + 0.02, d / 2, 0, h - 0.03, sp, rng, skip="bt"), None),
        (_box(-w / 2, w / 2, d / 2 - 0.03, d / 2, 0.3, h - 0.03, sp, rng, skip="bt"), None),
    ]
    room.put(placed, "desk", parts)
    if rng.random() < 0.5:
        _lamp(room, room.local_to_world(placed, (-side * w / 4, d / 4)), h)
    front = room.local_to_world(placed, (0.0, -d / 2 - 0.35))
    _chair(room, near=front, facing=placed.center)


def _sofa(room):
    rng, sp = room.rng, room.spec.spacing
    w, d = rng.uniform(1.6, 2.3), rng.uniform(0.85, 0.98)
    back, seat, arm = rng.uniform(0.78, 0.9), rng.uniform(0.4, 0.46), rng.uniform(0.55, 0.65)
    # The solid height is the seat's: pillows above it stay visible.
    placed = room.place("couch", w, d, seat, against_wall=rng.random() < 0.7, solid=True)
    if placed is None:
        return
    a = 0.16
    parts = [
        _box(-w / 2 + a, w / 2 - a, -d / 2, d / 2 - 0.2, 0, seat, sp, rng),
        _box(-w / 2, w / 2, d / 2 - 0.2, d / 2, 0, back, sp, rng),
        _box(-w / 2, -w / 2 + a, -d / 2, d / 2 - 0.2, 0, arm, sp, rng),
        _box(w / 2 - a, w / 2, -d / 2, d / 2 - 0.2, 0, arm, sp, rng),
    ]
    room.put(placed, "couch", [(p, None) for p in parts])
    for x in rng.uniform(-w / 2 + 0.4, w / 2 - 0.4, int(rng.integers(0, 3))):
        pillow = _box(x - 0.22, x + 0.22, d / 2 - 0.33, d / 2 - 0.2, seat, seat + 0.4, sp, rng)
        room.put(placed, "pillow", [(pillow, None)])


def _bed(room):
    rng, sp = room.rng, room.spec.spacing
    w, d = rng.uniform(1.0, 1.8), rng.uniform(1.95, 2.15)
    mattress, head = rng.uniform(0.48, 0.6), rng.uniform(0.9, 1.2)
    placed = room.place("bed", w, d, mattress, solid=True)
    if placed is None:
        return
    blanket = np.clip(np.array(BASE_COLORS["bed"]) + rng.normal(0, 55, 3), 30, 250)
    body = _box(-w / 2, w / 2, -d / 2, d / 2 - 0.06, 0, mattress, sp, rng)
    headboard = _box(-w / 2, w / 2, d / 2 - 0.06, d / 2, 0, head, sp, rng)
    wood = room.color_for("cabinet", len(headboard))
    room.put(placed, "bed", [(body, room.color_for("bed", len(body), blanket, spread=8)), (headboard, wood)])
    for x in ((0.0,) if w < 1.3 else (-w / 4, w / 4)):
        pillow = _box(x - 0.3, x + 0.3, d / 2 - 0.45, d / 2 - 0.1, mattress, mattress + 0.13, sp, rng)
        room.put(placed, "pillow", [(pillow, None)])
    # A nightstand beside the head (an ignored class: nyu40 32).
    for sx in (-1, 1):
        if rng.random() < 0.6:
            corner = room.local_to_world(placed, (sx * (w / 2 + 0.3), d / 2 - 0.23))
            _simple_box(room, "nightstand", 0.45, 0.42, rng.uniform(0.5, 0.62), near=corner)


def _simple_box(room, category, w, d, h, near=None, against_wall=None, z0=0.0, solid=True):
    """A closed box: cabinets, refrigerators, nightstands, ottomans, clutter."""
    rng, sp = room.rng, room.spec.spacing
    if against_wall is None:
        against_wall = near is None
    placed = room.place(category, w, d, h, against_wall=against_wall, near=near, solid=solid and z0 == 0)
    if placed is None:
        return None
    room.put(placed, category, [(_box(-w / 2, w / 2, -d / 2, d / 2, z0, h, sp, rng, skip="b" if z0 == 0 else ""), None)])
    return placed


def _cabinet(room):
    rng = room.rng
    category = rng.choice(["cabinet", "file cabinet", "kitchen cabinet"], p=[0.6, 0.2, 0.2])
    _simple_box(room, str(category), rng.uniform(0.5, 1.2), rng.uniform(0.42, 0.6), rng.uniform(0.7, 1.15))


def _bookshelf(room):
    rng, sp = room.rng, room.spec.spacing
    w, d, h = rng.uniform(0.75, 1.25), rng.uniform(0.28, 0.4), rng.uniform(1.5, 2.05)
    placed = room.place("bookshelf", w, d, h, solid=True)
    if placed is None:
        return
    t = 0.025
    parts = [
        (_box(-w / 2, -w / 2 + t, -d / 2, d / 2, 0, h, sp, rng), None),
        (_box(w / 2 - t, w / 2, -d / 2, d / 2, 0, h, sp, rng), None),
        (_box(-w / 2, w / 2, d / 2 - t, d / 2, 0, h, sp, rng, skip="bt"), None),
    ]
    shelves = np.arange(0.05, h, rng.uniform(0.3, 0.4))
    for z in shelves:
        parts.append((_box(-w / 2 + t, w / 2 - t, -d / 2, d / 2 - t, z, z + t, sp, rng, skip=""), None))
        # Books standing on the shelf, colorful, part of the bookshelf as ScanNet often annotates.
        x = -w / 2 + t
        while x < w / 2 - t - 0.05 and z + 0.3 < h:
            bw = rng.uniform(0.02, 0.06) if rng.random() < 0.85 else rng.uniform(0.1, 0.2)
            bh = rng.uniform(0.15, 0.28)
            if rng.random() < 0.8:
                book = _box(x, x + bw, -d / 2 + 0.04, d / 2 - t, z + t, z + t + bh, sp, rng, skip="blrk")
                parts.append((book, rng.uniform(30, 220, 3) + rng.normal(0, 8, (len(book), 3))))
            x += bw
    room.put(placed, "bookshelf", parts)


def _counter_run(room):
    """A kitchen counter: a slab at ~0.9 m over base cabinets, upper cabinets above it."""
    rng, sp = room.rng, room.spec.spacing
    w, d, h = rng.uniform(1.6, 3.0), rng.uniform(0.6, 0.66), rng.uniform(0.88, 0.93)
    # Solid up to the worktop: the closed base cabinets hide the floor and wall behind them.
    placed = room.place("counter", w, d, h - 0.04, solid=True)
    if placed is None:
        return
    room.put(placed, "counter", [(_box(-w / 2, w / 2, -d / 2, d / 2, h - 0.04, h, sp, rng, skip=""), None)])
    base = _box(-w / 2 + 0.01, w / 2 - 0.01, -d / 2 + 0.05, d / 2, 0, h - 0.04, sp, rng, skip="bt")
    room.put(placed, "kitchen cabinet", [(base, None)])
    if rng.random() < 0.8:
        top = rng.uniform(2.0, min(2.3, room.height - 0.05))
        upper = _box(-w / 2, w / 2, d / 2 - 0.35, d / 2, 1.45, top, sp, rng, skip="")
        room.put(placed, "kitchen cabinet", [(upper, None)])


def _refrigerator(room):
    rng = room.rng
    _simple_box(room, "refrigerator", rng.uniform(0.65, 0.9), rng.uniform(0.65, 0.75), rng.uniform(1.65, 1.9))


def _toilet(room):
    rng, sp = room.rng, room.spec.spacing
    placed = room.place("toilet", 0.45, 0.7, 0.8, solid=False)
    if placed is None:
        return
    seat = rng.uniform(0.38, 0.43)
    tank_top = rng.uniform(0.72, 0.82)
    parts = [
        _box(-0.12, 0.12, -0.15, 0.2, 0, seat - 0.12, sp, rng, skip="b"),
        _cylinder(0, -0.08, 0.19, seat - 0.14, seat, sp, rng, top=False),
        _disk(0, -0.08, 0.19, seat, sp, rng, inner=0.11),
        _disk(0, -0.08, 0.12, seat - 0.12, sp, rng),
        _box(-0.21, 0.21, 0.17, 0.35, seat - 0.02, tank_top, sp, rng, skip="bk"),
    ]
    room.put(placed, "toilet", [(p, None) for p in parts])


def _sink(room):
    rng, sp = room.rng, room.spec.spacing
    w, d, rim = rng.uniform(0.5, 0.65), rng.uniform(0.4, 0.5), rng.uniform(0.82, 0.9)
    placed = room.place("sink", w, d, rim, solid=False)
    if placed is None:
        return
    parts = [
        _cylinder(0, 0.02, 0.09, 0, rim - 0.16, sp, rng, top=False),
        _box(-w / 2, w / 2, -d / 2, d / 2, rim - 0.18, rim, sp, rng, skip="tk"),
        _box(-w / 2 + 0.05, w / 2 - 0.05, -d / 2 + 0.05, d / 2 - 0.08, rim - 0.13, rim, sp, rng, skip="t"),
    ]
    # The rim: the top face around the bowl.
    top = _box(-w / 2, w / 2, -d / 2, d / 2, rim, rim, sp, rng, skip="blrfk")
    inside = (np.abs(top[:, 0]) < w / 2 - 0.05) & (top[:, 1] > -d / 2 + 0.05) & (top[:, 1] < d / 2 - 0.08)
    parts.append(top[~inside])
    room.put(placed, "sink", [(p, None) for p in parts])


def _bathtub(room):
    rng, sp = room.rng, room.spec.spacing
    w, d, h = rng.uniform(1.45, 1.75), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    placed = room.place("bathtub", w, d, h, solid=True)
    if placed is None:
        return
    t = 0.08
    outer = _box(-w / 2, w / 2, -d / 2, d / 2, 0, h, sp, rng, skip="btk")
    inner = _box(-w / 2 + t, w / 2 - t, -d / 2 + t, d / 2 - t, 0.12, h, sp, rng, skip="t")
    rim = _box(-w / 2, w / 2, -d / 2, d / 2, h, h, sp, rng, skip="blrfk")
    rim = rim[(np.abs(rim[:, 0]) > w / 2 - t) | (np.abs(rim[:, 1]) > d / 2 - t)]
    room.put(placed, "bathtub", [(outer, None), (inner, None), (rim, None)])
    # The shower curtain hangs from a rod above the tub's open side, drawn part-way.
    width = rng.uniform(0.4, 0.8) * w
    sheet = _wavy(width, h + 0.1, min(2.0, room.height - 0.1), 0.03, rng.uniform(0.1, 0.16), sp, rng)
    sheet[:, 0] += rng.choice([-1, 1]) * (w - width) / 2
    sheet[:, 1] += -d / 2 + 0.04
    color = np.clip(np.array(BASE_COLORS["shower curtain"]) + rng.normal(0, 35, 3), 30, 250)
    room.put(placed, "shower curtain", [(sheet, color + rng.normal(0, 6, (len(sheet), 3)))])


def _other_furniture(room):
    rng, sp = room.rng, room.spec.spacing
    if rng.random() < 0.5:
        r, h = rng.uniform(0.12, 0.18), rng.uniform(0.3, 0.45)
        placed = room.place("trash can", 2 * r, 2 * r, h, against_wall=rng.random() < 0.5)
        if placed is not None:
            room.put(placed, "trash can", [(_cylinder(0, 0, r, 0, h, sp, rng, top=False), None)])
    else:
        _simple_box(room, "ottoman", rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.45), against_wall=False)


def _lamp(room, xy, z0):
    rng, sp = room.rng, room.spec.spacing
    h = rng.uniform(0.3, 0.45)
    points = np.concatenate([
        _cylinder(xy[0], xy[1], 0.015, z0, z0 + h, sp, rng, top=False),
        _cylinder(xy[0], xy[1], 0.1, z0 + h, z0 + h + 0.15, sp, rng),
    ])
    room.add("lamp", [(points, None)])


def _tv_cabinet(room):
    rng, sp = room.rng, room.spec.spacing
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.4, 0.5), rng.uniform(0.45, 0.6)
    placed = _simple_box(room, "cabinet", w, d, h)
    if placed is not None:
        tw = w * 0.8
        tv = _box(-tw / 2, tw / 2, 0.0, 0.05, h, h + tw * 0.56, sp, rng, skip="k")
        room.put(placed, "tv", [(tv, None)])


def _clutter(room):
    rng = room.rng
    for _ in range(int(rng.integers(0, 4))):
        s = rng.uniform(0.2, 0.5)
        _simple_box(room, "box", s, s * rng.uniform(0.7, 1.2), s * rng.uniform(0.6, 1.0), against_wall=rng.random() < 0.5)


FURNISH = {
    "bedroom": lambda r: [_bed(r), _cabinet(r), _desk(r)] + ([_bookshelf(r)] if r.rng.random() < 0.6 else []),
    "living": lambda r: [_sofa(r), _table(r, coffee=True), _tv_cabinet(r), _bookshelf(r), _chair(r, against_wall=True)],
    "kitchen": lambda r: [_counter_run(r), _refrigerator(r), _table_with_chairs(r), _cabinet(r)],
    "bathroom": lambda r: [_bathtub(r), _toilet(r), _sink(r), _cabinet(r)],
    "office": lambda r: [_desk(r), _desk(r), _bookshelf(r), _cabinet(r)] + ([_table_with_chairs(r)] if r.rng.random() < 0.5 else []),
}
# Pieces from other room types, so every class is common across scenes.
EXTRAS = (_bed, _sofa, _desk, _bookshelf, _counter_run, _refrigerator, _toilet, _sink, _bathtub, _table_with_chairs, _cabinet)


# ------------------------------------------------------------------------------- degradation


def _hidden_by_solids(room: _Room, coord: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Points inside another object's solid box (the floor under a bed, the wall behind a
    bookshelf) and an object's own back face against its wall are not seen by the sensor."""
    hidden = np.zeros(len(coord), bool)
    for placed in room.placed:
        if not placed.solid:
            continue
        w, d, h = placed.size
        # Test the exact (rotated) box only on points near it.
        reach = math.hypot(w, d) / 2 + 0.05
        near = np.flatnonzero(
            (np.abs(coord[:, 0] - placed.center[0]) < reach) & (np.abs(coord[:, 1] - placed.center[1]) < reach)
        )
        c, s = math.cos(placed.yaw), math.sin(placed.yaw)
        rel = coord[near, :2] - placed.center
        local = np.column_stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]])
        inside = (np.abs(local[:, 0]) < w / 2 + 0.02) & (np.abs(local[:, 1]) < d / 2 + 0.03)
        inside &= coord[near, 2] < h - 0.02
        own = np.isin(instance[near], placed.instances)
        hidden[near[inside & ~own]] = True
    # Furniture faces within 2.5 cm of a wall plane face the wall: invisible.
    on_walls = ("wall", "floor", "door", "window", "picture", "curtain", "whiteboard")
    furniture = ~np.isin(np.array(room.categories), on_walls)[instance]
    near_wall = (
        (coord[:, 0] < 0.025) | (coord[:, 1] < 0.025)
        | (coord[:, 0] > room.width - 0.025) | (coord[:, 1] > room.length - 0.025)
    )
    hidden |= furniture & near_wall
    return hidden


def _holes(room: _Room, coord: np.ndarray) -> np.ndarray:
    rng = room.rng
    gone = np.zeros(len(coord), bool)
    for _ in range(int(rng.integers(*room.spec.holes, endpoint=True))):
        center = coord[rng.integers(len(coord))]
        radius = rng.uniform(0.12, 0.45)
        # Squash the sphere so holes look like scan gaps, not clean balls.
        scale = rng.uniform(0.5, 1.5, 3)
        near = np.flatnonzero(np.abs(coord[:, 0] - center[0]) < radius * scale[0])
        inside = (((coord[near] - center) / scale) ** 2).sum(1) < radius**2
        gone[near[inside]] = True
    return gone


def generate_scene(seed: int, index: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """One synthetic room; depends only on (seed, index, spec)."""
    rng = np.random.default_rng([seed, index])
    room = _Room(rng, spec)
    # Room types cycle, shifted every 5 scenes so that held-out scenes (every 5th) vary too.
    room_type = ROOM_TYPES[(index + index // 5 + seed) % len(ROOM_TYPES)]
    if room_type == "bathroom":  # bathrooms are small
        room.width, room.length = rng.uniform(2.6, 3.6), rng.uniform(2.4, 3.2)
    _build_structure(room)
    # Keep a clear path in front of every door.
    for k, t0, t1, z0, _ in room.openings:
        if z0 == 0.0:
            a = room.on_wall(k, np.array([[t0, 0, 0], [t1, 0, -1.0]]))
            room.reserved.append(np.array([*a.min(0)[:2], *a.max(0)[:2]]))
    for _ in range(int(rng.integers(1, 3))):
        _add_wall_decor(room, "picture", rng.uniform(0.35, 1.0), rng.uniform(0.3, 0.75), rng.uniform(1.3, 1.7))
    if room_type == "office" and rng.random() < 0.7:
        _add_wall_decor(room, "whiteboard", rng.uniform(1.2, 1.8), rng.uniform(0.8, 1.1), 1.45)
    FURNISH[room_type](room)
    for extra in rng.choice(len(EXTRAS), size=2, replace=False):
        EXTRAS[int(extra)](room)
    _other_furniture(room)
    _clutter(room)

    coord = np.concatenate(room.points)
    color = np.concatenate(room.colors)
    instance = np.concatenate(room.instance_of)
    keep = ~_hidden_by_solids(room, coord, instance)
    keep &= ~_holes(room, coord)
    coord, color, instance = coord[keep], color[keep], instance[keep]
    # Depth-sensor noise after fusion is a few millimetres; isotropic Gaussian noise stands in for it.
    coord = coord + rng.normal(0, spec.sensor_noise, coord.shape)
    # Shading: surfaces further from the ceiling lights are a little darker.
    color = color * (0.88 + 0.12 * np.clip(coord[:, 2:3] / room.height, 0, 1))
    color = np.clip(np.rint(color), 0, 255).astype(np.uint8)

    # ScanNet scans sit at an arbitrary yaw with the floor near z = 0.
    yaw = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    coord = coord @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    coord[:, :2] -= coord[:, :2].min(0) - rng.uniform(0.0, 0.5, 2)
    coord = coord.astype(np.float32)

    # Over-segmentation: each object cut into cells; some structure cells stay unannotated.
    cell = np.floor(coord / spec.segment_size).astype(np.int64)
    cell -= cell.min(0)
    extent = cell.max(0) + 1
    key = ((instance * extent[0] + cell[:, 0]) * extent[1] + cell[:, 1]) * extent[2] + cell[:, 2]
    _, segment = np.unique(key, return_inverse=True)
    segment = segment.reshape(-1).astype(np.int64)
    is_structure = np.array([c in STRUCTURE for c in room.categories])
    segment_instance = np.zeros(segment.max() + 1, np.int64)
    segment_instance[segment] = instance
    structure_segments = np.flatnonzero(is_structure[segment_instance])
    dropped = rng.random(len(structure_segments)) < spec.unannotated
    annotated = np.ones(len(segment_instance), bool)
    annotated[structure_segments[dropped]] = False
    labeled = annotated[segment]
    nyu40_of_instance = np.array([category_nyu40(c) for c in room.categories], np.int64)
    nyu40 = np.where(labeled, nyu40_of_instance[instance], 0)
    instance = np.where(labeled, instance, -1)
    return Scene(coord, color, nyu40, instance, segment, list(room.categories))


# ------------------------------------------------------------------------------------ writing


def _label_palette(nyu40: np.ndarray) -> np.ndarray:
    """labels.ply colors vertices by label; any fixed palette will do."""
    ids = nyu40.astype(np.uint64)
    return np.stack([(ids * 67 + 40) % 256, (ids * 137 + 90) % 256, (ids * 199 + 10) % 256], 1)


def write_scene(scene_dir: str | Path, scene: Scene) -> None:
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    name = scene_dir.name
    cloud = {"coord": scene.coord, "color": scene.color, "nyu40": scene.nyu40}
    write_ply(scene_dir / f"{name}{SCANNET_MESH_SUFFIX}", cloud, alpha=True)
    write_ply(
        scene_dir / f"{name}{SCANNET_LABELS_SUFFIX}",
        cloud,
        alpha=True,
        label_key="nyu40",
        colors=_label_palette(scene.nyu40),
    )
    segs_name = f"{name}{SCANNET_SEGS_SUFFIX}"
    segs = {
        "params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "5000",
                   "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
        "sceneId": name,
        "segIndices": scene.segment.tolist(),
    }
    (scene_dir / segs_name).write_text(json.dumps(segs))
    groups = []
    for object_id, category in enumerate(scene.categories):
        segments = np.unique(scene.segment[scene.instance == object_id])
        if len(segments):
            groups.append({"id": object_id, "objectId": object_id, "segments": segments.tolist(), "label": category})
    aggregation = {
        "sceneId": f"scannet.{name}",
        "appId": "spatiotemporal.synthetic.v1",
        "segGroups": groups,
        "segmentsFile": f"scannet.{segs_name}",
    }
    (scene_dir / f"{name}{SCANNET_AGGREGATION_SUFFIX}").write_text(json.dumps(aggregation))


def scene_name(index: int) -> str:
    return f"scene{index:04d}_00"


def split_of(index: int, num_scenes: int, val_fraction: float) -> str:
    """Every k-th scene is held out for validation, so both splits see every room type."""
    if num_scenes < 2 or val_fraction <= 0:
        return "train"
    every = max(2, min(round(1 / val_fraction), num_scenes))
    return "val" if index % every == every - 1 else "train"


def write_dataset(
    out: str | Path,
    num_scenes: int,
    seed: int = 0,
    spec: SceneSpec = SceneSpec(),
    val_fraction: float = 0.2,
    progress: bool = False,
) -> dict[str, list[str]]:
    """Write `num_scenes` raw scenes as `out/sceneXXXX_00/` and the split files
    `out/scannetv2_{train,val}.txt`; returns the split lists."""
    from tqdm import tqdm

    out = Path(out)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for index in tqdm(range(num_scenes), desc="synthetic scenes", unit="scene", disable=not progress):
        name = scene_name(index)
        write_scene(out / name, generate_scene(seed, index, spec))
        splits[split_of(index, num_scenes, val_fraction)].append(name)
    for split, names in splits.items():
        (out / f"scannetv2_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return splits


def save_preview(path: str | Path, scenes: list[tuple[str, Scene]], max_points: int = 60_000) -> Path:
    """A PNG with each scene seen from above twice: in its colors and in its 20-class labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spatiotemporal.data.scannet import CLASS_NAMES, nyu40_to_segment20

    palette = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    fig, axes = plt.subplots(len(scenes), 2, figsize=(10, 5 * len(scenes)), squeeze=False)
    for row, (name, scene) in zip(axes, scenes):
        rng = np.random.default_rng(0)
        pick = rng.permutation(len(scene.coord))[:max_points]
        pick = pick[np.argsort(scene.coord[pick, 2])]  # draw low points first, tops stay visible
        xy = scene.coord[pick, :2]
        segment = nyu40_to_segment20(scene.nyu40[pick])
        label_colors = np.where(segment[:, None] >= 0, palette[np.clip(segment, 0, 19)], 0.8)
        for ax, colors, title in ((row[0], scene.color[pick] / 255.0, "colors"), (row[1], label_colors, "labels")):
            ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=0.5, linewidths=0)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: {title} (top view, {len(scene.coord):,} points)")
            ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[i], label=CLASS_NAMES[i]) for i in range(20)]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
