"""Reading point clouds: PLY (binary and ascii), .npy / .npz / .pth scene dumps, ScanNet raw scene folders
and the Pointcept-style preprocessed layout.

A point cloud in memory is a dict of numpy arrays:

- `coord` (N, 3) float32, metres;
- `color` (N, 3) float32 in 0..255 (float because color augmentations produce fractional
  values; it is stored as uint8 on disk, as Pointcept does);
- optional `normal` (N, 3) float32;
- optional `nyu40` (N,) int64, the raw ScanNet label (0 = unannotated);
- optional `segment` (N,) int64, 20-class benchmark ids 0..19 and -1 for ignore;
- optional `instance` (N,) int64, -1 where a point belongs to no object;
- from meshes, `faces` (M, 3) int64; from ScanNet scenes, `instance_category` (the raw
  category of each instance id).

Every reader validates what it returns and raises `PointCloudError(path, reason)` for unusable
input: an unreadable file, missing vertex properties, NaN or inf coordinates, an empty cloud, or
per-point arrays whose length does not match the vertex count.

PLY files are parsed with plyfile rather than open3d: open3d drops ScanNet's ushort `label`
property and, on a truncated file, silently returns the vertices it managed to read, while plyfile
reads every property and reports truncation. open3d is used where it is the better tool: normals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from spatiotemporal.io.errors import PointCloudError

PathLike = str | os.PathLike

# ScanNet's raw scene files, relative to the scene folder and prefixed by the scene id.
SCANNET_MESH_SUFFIX = "_vh_clean_2.ply"
SCANNET_LABELS_SUFFIX = "_vh_clean_2.labels.ply"
SCANNET_SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
SCANNET_AGGREGATION_SUFFIX = ".aggregation.json"

# Every point-cloud file type `read_points` reads; input listings use this so they never list a
# file the reader rejects, nor miss one it accepts.
POINT_FILE_EXTENSIONS = (".ply", ".npy", ".npz", ".pth", ".pt")

# The Pointcept preprocessed layout: file stem -> key in memory.
PREPROCESSED_FILES = {
    "coord": "coord",
    "color": "color",
    "normal": "normal",
    "segment20": "segment",
    "instance": "instance",
}

_PER_POINT_INT_KEYS = ("nyu40", "segment", "instance")


def validate_cloud(path: PathLike, cloud: dict) -> dict:
    """Check the invariants every reader promises and normalise dtypes; returns `cloud`."""
    if "coord" not in cloud:
        raise PointCloudError(path, "no coordinates")
    coord = np.asarray(cloud["coord"])
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise PointCloudError(path, f"coordinates must have shape (N, 3), got {coord.shape}")
    if len(coord) == 0:
        raise PointCloudError(path, "empty point cloud (0 points)")
    finite = np.isfinite(coord).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise PointCloudError(
            path, f"{len(bad)} points have NaN or inf coordinates (first at index {bad[0]})"
        )
    n = len(coord)
    cloud["coord"] = coord.astype(np.float32, copy=False)
    for key in ("color", "normal"):
        if key in cloud:
            value = np.asarray(cloud[key])
            if value.shape != (n, 3):
                raise PointCloudError(
                    path, f"'{key}' has shape {value.shape}, expected ({n}, 3) for {n} points"
                )
            cloud[key] = value.astype(np.float32, copy=False)
    for key in _PER_POINT_INT_KEYS:
        if key in cloud:
            value = np.asarray(cloud[key]).reshape(-1)
            if len(value) != n:
                raise PointCloudError(
                    path, f"'{key}' has {len(value)} values but the cloud has {n} points"
                )
            cloud[key] = value.astype(np.int64, copy=False)
    return cloud


# ----------------------------------------------------------------------------------------- PLY


def _read_ply_vertices(path: PathLike):
    import plyfile

    try:
        ply = plyfile.PlyData.read(os.fspath(path))
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except (plyfile.PlyParseError, ValueError, OSError, UnicodeDecodeError) as error:
        raise PointCloudError(path, f"unreadable PLY: {error}") from error
    names = [element.name for element in ply.elements]
    if "vertex" not in names:
        raise PointCloudError(path, f"PLY has no 'vertex' element (elements: {names})")
    vertex = ply["vertex"]
    return ply, vertex, {prop.name for prop in vertex.properties}


def _stack(vertex, names: tuple[str, ...], dtype) -> np.ndarray:
    return np.stack([np.asarray(vertex[name]) for name in names], axis=1).astype(dtype)


_COLOUR_PROPERTIES = ("red", "green", "blue")


def _read_ply_colours(path: PathLike, vertex) -> np.ndarray:
    """(N, 3) float32 colours in 0..255 from the PLY's red/green/blue, whatever their type.

    The PLY format does not fix a colour range, so the declared type decides: uchar is 0..255
    already, ushort is 0..65535, and float colours in 0..1 (as some exporters write them)
    are fractions of full intensity. Values still outside 0..255 would reach the model as
    nonsense features without any error, so they are rejected.
    """
    types = {np.dtype(vertex.ply_property(name).val_dtype) for name in _COLOUR_PROPERTIES}
    if len(types) != 1:
        # Scaling each channel by its own type would silently mix colour ranges in one pixel.
        raise PointCloudError(path, f"red/green/blue have different types {sorted(t.name for t in types)}")
    (dtype,) = types
    color = _stack(vertex, _COLOUR_PROPERTIES, np.float64)
    if not np.isfinite(color).all():
        raise PointCloudError(path, "colour values include NaN or inf")
    if dtype == np.uint16:
        color /= 257.0  # 65535 / 257 == 255 exactly: full intensity maps to full intensity
    elif dtype.kind == "f" and color.min() >= 0.0 and color.max() <= 1.0:
        color *= 255.0
    lo, hi = float(color.min()), float(color.max())
    if lo < 0.0 or hi > 255.0:
        raise PointCloudError(
            path, f"{dtype.name} colour values span {lo:g}..{hi:g}, outside 0..255 (or 0..1 for float)"
        )
    return color.astype(np.float32)


def _triangles(path: PathLike, faces: np.ndarray, num_vertices: int) -> np.ndarray | None:
    """(M, 3) vertex indices of a triangle mesh; None for polygons (normals then come from the
    points). Out-of-range indices are an error: open3d would read past its vertex buffer."""
    rows = faces[faces.dtype.names[0]]
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    if not (lengths == 3).all():
        return None
    triangles = np.concatenate(rows).astype(np.int64).reshape(-1, 3)
    if triangles.min() < 0 or triangles.max() >= num_vertices:
        raise PointCloudError(path, f"face indices out of range for {num_vertices} vertices")
    return triangles


def read_ply(path: PathLike, require: tuple[str, ...] = ()) -> dict:
    """Read a PLY point cloud or mesh's vertices (binary or ascii).

    Reads x/y/z, red/green/blue, nx/ny/nz and ScanNet's `label` (as `nyu40`) when present.
    Colours come back in 0..255 whether stored as uchar, ushort or float 0..1 (see
    `_read_ply_colours`); any other range is a `PointCloudError`.
    `require` names extra vertex properties that must exist (e.g. ("label",) for a labels file).
    Faces, when present, are returned as `faces` (M, 3) int64 so normals can come from the mesh.
    """
    ply, vertex, props = _read_ply_vertices(path)
    missing = [name for name in ("x", "y", "z", *require) if name not in props]
    if missing:
        raise PointCloudError(
            path, f"missing vertex properties {missing} (has {sorted(props)})"
        )
    if vertex.count == 0:
        raise PointCloudError(path, "empty point cloud (0 vertices)")
    try:
        cloud: dict = {"coord": _stack(vertex, ("x", "y", "z"), np.float64)}
        if {"red", "green", "blue"} <= props:
            cloud["color"] = _read_ply_colours(path, vertex)
        if {"nx", "ny", "nz"} <= props:
            cloud["normal"] = _stack(vertex, ("nx", "ny", "nz"), np.float32)
        if "label" in props:
            cloud["nyu40"] = np.asarray(vertex["label"]).astype(np.int64)
        names = [element.name for element in ply.elements]
        if "face" in names and ply["face"].count:
            faces = _triangles(path, ply["face"].data, vertex.count)
            if faces is not None:
                cloud["faces"] = faces
    except (ValueError, KeyError) as error:
        raise PointCloudError(path, f"unreadable PLY data: {error}") from error
    return validate_cloud(path, cloud)


def write_ply(
    path: PathLike,
    cloud: dict,
    *,
    text: bool = False,
    alpha: bool = False,
    label_key: str | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Write `cloud` as a PLY: float xyz, uchar rgb (+ alpha), normals when the cloud has them,
    and a ushort `label` from `cloud[label_key]`. Without normals this is ScanNet's vh_clean_2 /
    labels.ply vertex layout. `colors` overrides the stored rgb (labels.ply files carry a label
    palette instead)."""
    import plyfile

    coord = np.asarray(cloud["coord"], dtype=np.float32)
    n = len(coord)
    fields: list[tuple[str, str]] = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    rgb = colors if colors is not None else cloud.get("color")
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        if alpha:
            fields += [("alpha", "u1")]
    if "normal" in cloud:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    if label_key is not None:
        fields += [("label", "u2")]
    vertex = np.empty(n, dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = coord.T
    if rgb is not None:
        rgb = np.clip(np.rint(np.asarray(rgb, dtype=np.float32)), 0, 255).astype(np.uint8)
        vertex["red"], vertex["green"], vertex["blue"] = rgb.T
        if alpha:
            vertex["alpha"] = 255
    if "nx" in vertex.dtype.names:
        vertex["nx"], vertex["ny"], vertex["nz"] = np.asarray(cloud["normal"], np.float32).T
    if label_key is not None:
        vertex["label"] = np.asarray(cloud[label_key]).astype(np.uint16)
    element = plyfile.PlyElement.describe(vertex, "vertex")
    plyfile.PlyData([element], text=text, byte_order="<").write(os.fspath(path))


# ------------------------------------------------------------------------------- array dumps


def _from_columns(path: PathLike, array: np.ndarray) -> dict:
    """An (N, C) array: xyz, then rgb (0..255), then a 20-class label column (-1 ignore)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 3:
        raise PointCloudError(path, f"expected an (N, >=3) array of xyz[rgb[label]], got {array.shape}")
    cloud: dict = {"coord": array[:, :3]}
    if array.shape[1] >= 6:
        cloud["color"] = array[:, 3:6]
    if array.shape[1] >= 7:
        cloud["segment"] = array[:, 6]
    return cloud


_PTH_ALIASES = {
    "coord": "coord",
    "color": "color",
    "normal": "normal",
    "segment": "segment",
    "segment20": "segment",
    "semantic_gt20": "segment",
    "semantic_gt": "segment",
    "instance": "instance",
    "instance_gt": "instance",
    "nyu40": "nyu40",
}


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def read_pth(path: PathLike) -> dict:
    """A torch-saved scene: a Pointcept dict (coord/color/normal/semantic_gt20/instance_gt) or the
    older (coords, colors, labels[, instances]) tuple whose colors are scaled to -1..1."""
    import torch

    # Old dumps pickle numpy arrays; allow exactly the numpy pieces needed, nothing else.
    # Dumps written under numpy 1.x name the reconstructor by its old module path.
    reconstruct = np._core.multiarray._reconstruct
    safe: list = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    safe += [type(np.dtype(t)) for t in ("f4", "f8", "i8", "i4", "i2", "u1", "u2", "b1")]
    try:
        with torch.serialization.safe_globals(safe):
            data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise PointCloudError(path, f"unreadable .pth scene: {error}") from error
    if isinstance(data, dict):
        cloud = {_PTH_ALIASES[k]: _as_numpy(v) for k, v in data.items() if k in _PTH_ALIASES}
    elif isinstance(data, (tuple, list)) and len(data) >= 1:
        arrays = [_as_numpy(v) for v in data]
        cloud = {"coord": arrays[0]}
        if len(arrays) > 1:
            color = arrays[1].astype(np.float32)
            cloud["color"] = (color + 1.0) * 127.5 if color.min() < 0 else color
        if len(arrays) > 2:
            cloud["segment"] = arrays[2]
        if len(arrays) > 3:
            cloud["instance"] = arrays[3]
    else:
        raise PointCloudError(path, f"a .pth scene must hold a dict or a tuple, not {type(data).__name__}")
    if "segment" in cloud:
        # SparseConvNet-era dumps use -100 for ignore; the library uses -1.
        segment = np.asarray(cloud["segment"]).astype(np.int64)
        cloud["segment"] = np.where(segment < 0, -1, segment)
    return validate_cloud(path, cloud)


def read_npy(path: PathLike) -> dict:
    try:
        array = np.load(os.fspath(path), allow_pickle=False)
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except (ValueError, OSError) as error:
        raise PointCloudError(path, f"unreadable .npy: {error}") from error
    return validate_cloud(path, _from_columns(path, array))


def read_npz(path: PathLike) -> dict:
    """An `np.savez` scene: named arrays with the names a .pth dict uses (coord, color, normal,
    segment20, instance, ...), or a single array of xyz[rgb[label]] columns as in a .npy."""
    try:
        loaded = np.load(os.fspath(path), allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # an .npy under an .npz name: np.load goes by content
            arrays = {"arr_0": loaded}
        else:
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except Exception as error:  # zipfile, zlib and numpy raise many types for a corrupt archive
        raise PointCloudError(path, f"unreadable .npz: {error}") from error
    cloud = {_PTH_ALIASES[k]: v for k, v in arrays.items() if k in _PTH_ALIASES}
    if not cloud:
        if len(arrays) != 1:
            raise PointCloudError(
                path, f"a .npz scene needs a 'coord' array or one xyz[rgb[label]] array, found {sorted(arrays)}"
            )
        cloud = _from_columns(path, next(iter(arrays.values())))
    if "segment" in cloud:
        # Same ignore convention as .pth dumps: any negative label is ignore (-1).
        segment = np.asarray(cloud["segment"]).astype(np.int64)
        cloud["segment"] = np.where(segment < 0, -1, segment)
    return validate_cloud(path, cloud)


def read_preprocessed(scene_dir: PathLike) -> dict:
    """One scene of the Pointcept layout: `{scene}/coord.npy, color.npy, normal.npy,
    segment20.npy, instance.npy` (only coord is required)."""
    scene_dir = Path(scene_dir)
    if not (scene_dir / "coord.npy").is_file():
        raise PointCloudError(scene_dir, "not a preprocessed scene: coord.npy is missing")
    cloud = {}
    for stem, key in PREPROCESSED_FILES.items():
        file = scene_dir / f"{stem}.npy"
        if file.is_file():
            try:
                cloud[key] = np.load(file, allow_pickle=False)
            except (ValueError, OSError) as error:
                raise PointCloudError(file, f"unreadable .npy: {error}") from error
    return validate_cloud(scene_dir, cloud)


def write_preprocessed(scene_dir: PathLike, cloud: dict) -> None:
    """Write the Pointcept layout; colors as uint8 and labels as int16, as Pointcept stores them."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    np.save(scene_dir / "coord.npy", np.asarray(cloud["coord"], np.float32))
    if "color" in cloud:
        color = np.clip(np.rint(cloud["color"]), 0, 255).astype(np.uint8)
        np.save(scene_dir / "color.npy", color)
    if "normal" in cloud:
        np.save(scene_dir / "normal.npy", np.asarray(cloud["normal"], np.float32))
    if "segment" in cloud:
        np.save(scene_dir / "segment20.npy", np.asarray(cloud["segment"]).astype(np.int16))
    if "instance" in cloud:
        np.save(scene_dir / "instance.npy", np.asarray(cloud["instance"]).astype(np.int16))


# --------------------------------------------------------------------------- ScanNet raw scenes


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PointCloudError(path, f"unreadable JSON: {error}") from error


def read_scannet_instances(scene_dir: PathLike, num_points: int) -> tuple[np.ndarray, list[str]] | None:
    """Instance ids per vertex from `.aggregation.json` + `*_vh_clean_2.0.010000.segs.json`.

    Returns (instance (N,) int64 with -1 for unassigned vertices, raw category per instance id),
    or None when either file is absent.
    """
    scene_dir = Path(scene_dir)
    scene = scene_dir.name
    segs_file = scene_dir / f"{scene}{SCANNET_SEGS_SUFFIX}"
    aggregation_file = scene_dir / f"{scene}{SCANNET_AGGREGATION_SUFFIX}"
    if not (segs_file.is_file() and aggregation_file.is_file()):
        return None
    seg_indices = np.asarray(_read_json(segs_file).get("segIndices", []), dtype=np.int64)
    if len(seg_indices) != num_points:
        raise PointCloudError(
            segs_file, f"{len(seg_indices)} segment indices but the mesh has {num_points} vertices"
        )
    groups = _read_json(aggregation_file).get("segGroups")
    if not isinstance(groups, list):
        raise PointCloudError(aggregation_file, "no 'segGroups' list")
    instance = np.full(num_points, -1, dtype=np.int64)
    categories: list[str] = [""] * len(groups)
    # Segment ids are sparse and large; map them through a sorted lookup instead of a dense table.
    order = np.argsort(seg_indices, kind="stable")
    sorted_segs = seg_indices[order]
    for number, group in enumerate(groups):
        object_id = int(group.get("objectId", group.get("id", number)))
        if object_id >= len(categories):
            categories.extend([""] * (object_id + 1 - len(categories)))
        categories[object_id] = str(group.get("label", ""))
        segments = np.asarray(group.get("segments", []), dtype=np.int64)
        lo = np.searchsorted(sorted_segs, segments, side="left")
        hi = np.searchsorted(sorted_segs, segments, side="right")
        if len(segments):
            members = np.concatenate([order[a:b] for a, b in zip(lo, hi)])
            instance[members] = object_id
    return instance, categories


def read_scannet_scene(scene_dir: PathLike) -> dict:
    """A raw ScanNet v2 scene folder.

    `{scene}_vh_clean_2.ply` gives coordinates, colors and faces; `{scene}_vh_clean_2.labels.ply`
    (absent for test scenes) gives the nyu40 `label` per vertex; the aggregation and segments
    files, when both are present, give `instance` and `instance_category` (raw category per id).
    """
    scene_dir = Path(scene_dir)
    scene = scene_dir.name
    mesh_file = scene_dir / f"{scene}{SCANNET_MESH_SUFFIX}"
    if not mesh_file.is_file():
        raise PointCloudError(scene_dir, f"not a ScanNet scene: {mesh_file.name} is missing")
    cloud = read_ply(mesh_file, require=("red", "green", "blue"))
    n = len(cloud["coord"])
    labels_file = scene_dir / f"{scene}{SCANNET_LABELS_SUFFIX}"
    if labels_file.is_file():
        labels = read_ply(labels_file, require=("label",))
        if len(labels["nyu40"]) != n:
            raise PointCloudError(
                labels_file,
                f"label count {len(labels['nyu40'])} does not match the mesh's {n} vertices",
            )
        cloud["nyu40"] = labels["nyu40"]
    instances = read_scannet_instances(scene_dir, n)
    if instances is not None:
        cloud["instance"], cloud["instance_category"] = instances
    return validate_cloud(mesh_file, cloud)


def is_scannet_scene(path: PathLike) -> bool:
    path = Path(path)
    return (path / f"{path.name}{SCANNET_MESH_SUFFIX}").is_file()


def read_points(path: PathLike) -> dict:
    """Read any supported point cloud: a file of a `POINT_FILE_EXTENSIONS` type, a ScanNet raw
    scene folder or a preprocessed scene folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "coord.npy").is_file():
            return read_preprocessed(path)
        if is_scannet_scene(path):
            return read_scannet_scene(path)
        raise PointCloudError(path, "folder is neither a ScanNet scene nor a preprocessed scene")
    if not path.exists():
        raise PointCloudError(path, "file does not exist")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".npy":
        return read_npy(path)
    if suffix == ".npz":
        return read_npz(path)
    if suffix in (".pth", ".pt"):
        return read_pth(path)
    raise PointCloudError(
        path, f"unsupported point cloud format '{suffix}' (use {', '.join(POINT_FILE_EXTENSIONS)} or a scene folder)"
    )


# ------------------------------------------------------------------------------------ normals


def estimate_normals(cloud: dict, radius: float = 0.1, max_nn: int = 30) -> np.ndarray:
    """Unit normals with open3d: from the mesh faces when the cloud has them (as ScanNet's
    reference preprocessing does), otherwise by local PCA, oriented towards a viewpoint above
    the scene's centre because indoor surfaces face into the room."""
    import open3d as o3d

    coord = np.asarray(cloud["coord"], dtype=np.float64)
    if "faces" in cloud:
        mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(coord), o3d.utility.Vector3iVector(cloud["faces"].astype(np.int32))
        )
        mesh.compute_vertex_normals()
        normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
        if np.isfinite(normals).all() and len(normals) == len(coord):
            return normals
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=max_nn))
    lo, hi = coord.min(0), coord.max(0)
    viewpoint = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] + 0.6 * (hi[2] - lo[2])])
    pcd.orient_normals_towards_camera_location(viewpoint)
    normals = np.asarray(pcd.normals, dtype=np.float32)
    # Isolated points get a zero normal from open3d; give them "up" rather than NaN downstream.
    bad = ~np.isfinite(normals).all(1) | (np.linalg.norm(normals, axis=1) < 0.5)
    normals[bad] = (0.0, 0.0, 1.0)
    return normals
