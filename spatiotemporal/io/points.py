"""Reading point clouds: PLY (binary and ascii), .npy / .npz / .pth scene dumps, ScanNet raw scene folders
and the Pointcept-style preprocessed layout.

A point cloud in memory is a dict of numpy arrays:

- `coord` (N, 3) float32, metres, relative to `origin`;
- `origin` (3,) float64, metres: where `coord`'s zero lies in the file's own coordinates, so a
  point's position as the file gives it is `origin + coord`. Zero for every cloud whose bounding
  box is centred within `ORIGIN_STEP` of zero (indoor scans, ScanNet, sensor-frame fragments),
  whose coordinates are then the file's bit for bit; see `validate_cloud`;
- `color` (N, 3) float32 in 0..255 (float because color augmentations produce fractional
  values; it is stored as uint8 on disk, as Pointcept does);
- optional `normal` (N, 3) float32;
- optional `nyu40` (N,) int64, the raw ScanNet label (0 = unannotated);
- optional `label` (N,) int64, a PLY's per-vertex `label` property as stored: what its ids mean
  is the file's business (a ScanNet labels.ply holds nyu40 ids, which `read_scannet_scene`
  returns as `nyu40`; `infer --out` writes nyu40 ids or class indices and says which);
- optional `segment` (N,) int64, 20-class benchmark ids 0..19 and -1 for ignore;
- optional `instance` (N,) int64, -1 where a point belongs to no object;
- from meshes, `faces` (M, 3) int64; from ScanNet scenes, `instance_category` (the raw
  category of each instance id).

Every reader validates what it returns and raises `PointCloudError(path, reason)` for unusable
input: an unreadable file (a .pth that is not a torch file or that torch's safe loader cannot
read, a binary PLY whose body holds more data than its header describes), missing vertex
properties, NaN or inf coordinates, points that cannot all lie within `FLOAT32_MM_RANGE` of one
origin (a stray return far from the scan; the reason names it), an empty cloud, or per-point
arrays whose length does not match the vertex count.

PLY files are parsed with plyfile rather than open3d: open3d drops ScanNet's ushort `label`
property and, on a truncated file, silently returns the vertices it managed to read, while plyfile
reads every property and reports truncation. open3d is used where it is the better tool: normals.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spatiotemporal.io.errors import REASON_MAX_CHARS, PointCloudError, some_names
from spatiotemporal.io.torch_files import NOT_A_TORCH_FILE, is_torch_file, unsupported_pickle_reason

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

_PER_POINT_INT_KEYS = ("nyu40", "label", "segment", "instance")

# float32 carries 24 significant bits: a georeferenced scan (UTM eastings near 5e5 m, northings
# near 5e6 m) held as it is would be resolved to 3-50 cm, merging neighbouring points. Coordinates
# are therefore held relative to an `origin`, moved in whole steps of this many metres onto the
# bounding box's centre, per axis, whenever that centre lies farther than one step from it. The
# points then lie within one step plus half the cloud's extent of zero, where float32 resolves
# 8 um or better for a room-sized cloud. Whole metres, so that `origin` reads as round numbers.
ORIGIN_STEP = 64.0

# A coordinate held in float32 comes back within 1 mm of the file's (float32 rounds to half its
# spacing, 2**-10 m = 0.98 mm below 2**15 m) only while it lies within this many metres of the
# origin: 32,768 m, so a cloud may span 65 km. A cloud whose points cannot all be put that close
# to one origin is refused, not rounded: one stray return (a lidar export's 0,0,0 for "no echo",
# a point at 1e9 m) would otherwise put the bounding box's centre between it and the scan and
# round every real point to decimetres, or carry extents no neighbour search survives.
FLOAT32_MM_RANGE = 2.0**15


def _origin_shift(path: PathLike, coord: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(3,) float64: how far to move the origin so `coord` lies near it; zero when it already does
    (so reading a cloud twice, or validating one a reader returned, moves nothing).

    The bounding box's centre is the origin that admits the widest clouds; when even it leaves a
    point farther than `FLOAT32_MM_RANGE`, the cloud is refused, naming the point farthest from
    the cloud's median (which a few stray points cannot move) and its position in the file.
    """
    lo, hi = coord.min(0).astype(np.float64), coord.max(0).astype(np.float64)
    centre = lo / 2 + hi / 2  # not (lo + hi) / 2, which overflows for coordinates near 1e308
    shift = np.where(np.abs(centre) > ORIGIN_STEP, ORIGIN_STEP * np.round(centre / ORIGIN_STEP), 0.0)
    if max(np.abs(hi - shift).max(), np.abs(lo - shift).max()) > FLOAT32_MM_RANGE:
        raise PointCloudError(path, _stray_point_reason(coord.astype(np.float64), origin))
    return shift


def _stray_point_reason(coord: np.ndarray, origin: np.ndarray) -> str:
    median = np.median(coord, axis=0)
    distance = np.abs(coord - median).max(1)  # per axis, as float32 holds each axis on its own
    index = int(np.argmax(distance))

    def position(xyz: np.ndarray) -> str:
        return "(" + ", ".join(f"{v:.10g}" for v in xyz) + ")"

    far = distance[index]
    far_text = f"{far:,.0f}" if far < 1e12 else f"{far:.3g}"
    return (
        f"point {index} at {position(origin + coord[index])} lies {far_text} m from the"
        f" median point {position(origin + median)}; float32 coordinates keep 1 mm only within"
        f" {FLOAT32_MM_RANGE:,.0f} m of one origin: drop the stray point or split the cloud"
    )


def validate_cloud(path: PathLike, cloud: dict) -> dict:
    """Check the invariants every reader promises and normalise dtypes; returns `cloud`.

    Coordinates arrive in whatever precision the file holds (float64 for georeferenced scans);
    they are moved near zero in float64 (`_origin_shift`, recorded in `origin`, which a cloud may
    already carry) and only then cast to float32.
    """
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
    origin = np.asarray(cloud.get("origin", np.zeros(3)), dtype=np.float64)
    if origin.shape != (3,) or not np.isfinite(origin).all():
        raise PointCloudError(path, f"'origin' must be 3 finite numbers, got {origin!r}")
    shift = _origin_shift(path, coord, origin)
    if shift.any():
        coord = coord.astype(np.float64) - shift
        origin = origin + shift
    cloud["coord"] = coord.astype(np.float32, copy=False)
    cloud["origin"] = origin
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
        with open(os.fspath(path), "rb") as stream:
            ply = plyfile.PlyData.read(stream)
            # An ascii body is read through a text wrapper that closes the file: not checked.
            excess = 0 if ply.text else _unread_data(stream, ply)
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except (plyfile.PlyParseError, ValueError, OSError, UnicodeDecodeError) as error:
        raise PointCloudError(path, f"unreadable PLY: {error}") from error
    if excess:
        raise PointCloudError(path, _body_mismatch_reason(ply, excess))
    names = [element.name for element in ply.elements]
    if "vertex" not in names:
        raise PointCloudError(path, f"PLY has no 'vertex' element (elements: {names})")
    vertex = ply["vertex"]
    return ply, vertex, {prop.name for prop in vertex.properties}


# Bytes a writer pads a file with: NUL (to a block or sector) and whitespace (a final line break).
_PADDING_BYTES = b"\0 \t\r\n\x0b\x0c"


def _row_bytes(element) -> int:
    """Bytes one row of a binary PLY element takes at least (a list property's count, no items)."""
    return sum(np.dtype(getattr(p, "len_dtype", p.val_dtype)).itemsize for p in element.properties)


def _unread_data(stream, ply) -> int:
    """How many bytes follow the binary body plyfile read (from `stream`, left just past it), when
    they are data the header does not describe; 0 when they are only padding.

    plyfile reads what the header describes and ignores the rest, so a body written with other
    types or counts than the header declares (float declared, double written) reads as garbage.
    Such a body overruns by what every row grew by, times the rows: at least one vertex row for
    any cloud of more points than a row has bytes. Bytes after the body are therefore refused
    only when there are at least a vertex row's worth and not all of them are padding (NUL or
    whitespace, as writers append to fill a block or end a file): fewer cannot hold a point the
    header left out, and padding holds none.
    """
    excess = os.fstat(stream.fileno()).st_size - stream.tell()
    vertex = next((e for e in ply.elements if e.name == "vertex"), None)
    row = _row_bytes(vertex) if vertex is not None else min((_row_bytes(e) for e in ply.elements), default=1)
    if excess < max(row, 1):
        return 0
    while chunk := stream.read(1 << 20):
        if chunk.strip(_PADDING_BYTES):  # a byte that is not padding, anywhere in the chunk
            return excess
    return 0


def _body_mismatch_reason(ply, excess: int) -> str:
    def described(element) -> str:
        fixed = all(not hasattr(p, "len_dtype") for p in element.properties)
        least = "" if fixed else "at least "
        row = _row_bytes(element)
        return f"{element.name}: {element.count:,} rows of {least}{row} byte{'' if row == 1 else 's'}"

    start = f"binary PLY body is {excess:,} bytes longer than its header describes ("
    end = (
        "): it was written with other property types or counts than the header declares"
        " (e.g. double written, float declared)"
    )
    # Element names are the file's own text: listed as far as the line holds them.
    elements = some_names([described(e) for e in ply.elements], REASON_MAX_CHARS - len(start) - len(end))
    return f"{start}{elements}{end}"


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

    Reads x/y/z (in float64 whatever their stored type, see `validate_cloud` for `origin`),
    red/green/blue, nx/ny/nz and a `label` property (as `label`, ids as stored) when present.
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
            cloud["label"] = np.asarray(vertex["label"]).astype(np.int64)
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
    """Write `cloud` as a PLY: xyz, uchar rgb (+ alpha), normals when the cloud has them,
    and a ushort `label` from `cloud[label_key]`. Without normals this is ScanNet's vh_clean_2 /
    labels.ply vertex layout. `colors` overrides the stored rgb (labels.ply files carry a label
    palette instead).

    The coordinates written are the file's own, `origin + coord`: float where float holds them
    exactly (every cloud read with a zero origin), double otherwise (a georeferenced one), since
    float would round a UTM northing to half a metre."""
    import plyfile

    origin = np.asarray(cloud.get("origin", np.zeros(3)), dtype=np.float64)
    coord = np.asarray(cloud["coord"], dtype=np.float64) + origin
    n = len(coord)
    xyz = "f4" if np.array_equal(coord.astype(np.float32), coord) else "f8"
    fields: list[tuple[str, str]] = [("x", xyz), ("y", xyz), ("z", xyz)]
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
        if not is_torch_file(path):
            raise PointCloudError(path, f"unreadable .pth scene: {NOT_A_TORCH_FILE}")
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            # Protocol 3 reads (with a warning on stderr, advice to torch's developers); the
            # protocols it does not read are refused below with what to do.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PointCloudError(path, "file does not exist") from None
    except pickle.UnpicklingError as error:
        # torch's weights_only refusal: pages of advice, ending in the unsafe weights_only=False.
        unsupported = unsupported_pickle_reason(path, str(error))
        if unsupported is not None:
            raise PointCloudError(path, f"unreadable .pth scene: {unsupported}") from None
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f"a {found.group(1)} object" if found else "an object that is not an array"
        raise PointCloudError(
            path, f"unreadable .pth scene: it holds {what}, and a scene may hold only arrays,"
            " tensors and plain containers (other objects are not unpickled: that could run code)"
        ) from None
    except PointCloudError:
        raise
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
    segment20.npy, instance.npy` (only coord is required), plus this library's `origin.npy` for
    a cloud `write_preprocessed` was given with a non-zero origin."""
    scene_dir = Path(scene_dir)
    if not (scene_dir / "coord.npy").is_file():
        raise PointCloudError(scene_dir, "not a preprocessed scene: coord.npy is missing")
    cloud = {}
    for stem, key in {**PREPROCESSED_FILES, "origin": "origin"}.items():
        file = scene_dir / f"{stem}.npy"
        if file.is_file():
            try:
                cloud[key] = np.load(file, allow_pickle=False)
            except (ValueError, OSError) as error:
                raise PointCloudError(file, f"unreadable .npy: {error}") from error
    return validate_cloud(scene_dir, cloud)


def write_preprocessed(scene_dir: PathLike, cloud: dict) -> None:
    """Write the Pointcept layout; colors as uint8 and labels as int16, as Pointcept stores them.

    coord.npy holds float32 coordinates relative to the cloud's `origin`; a non-zero origin goes
    to `origin.npy` (float64), which Pointcept does not know: the scene trains the same without
    it (models see centred coordinates), and `read_preprocessed` restores the origin from it."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    np.save(scene_dir / "coord.npy", np.asarray(cloud["coord"], np.float32))
    origin = np.asarray(cloud.get("origin", np.zeros(3)), np.float64)
    if origin.any():
        np.save(scene_dir / "origin.npy", origin)
    else:
        (scene_dir / "origin.npy").unlink(missing_ok=True)  # a stale one would move the new scene
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
        if len(labels["label"]) != n:
            raise PointCloudError(
                labels_file,
                f"label count {len(labels['label'])} does not match the mesh's {n} vertices",
            )
        cloud["nyu40"] = labels["label"]  # ScanNet's labels.ply: the `label` ids are nyu40 ids
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


# A perspective sensor sees nothing this far off its viewing direction (depth cameras: 35-45 deg).
_SENSOR_HALF_ANGLE_DEG = 80.0
# One sensor frame hides nothing; an RGB-D fragment fused over a short trajectory hides a few
# per cent (livingroom_fragment.ply: 8%). Rooms in world coordinates, seen from an origin outside
# them, hide a third and more (the near wall covers the far one).
_SENSOR_MAX_HIDDEN = 0.2


def estimate_normals(
    cloud: dict, radius: float = 0.1, max_nn: int = 30, viewpoint: Sequence[float] | None = None
) -> np.ndarray:
    """Unit normals (N, 3) float32, each pointing to the side its surface was seen from.

    No axis is taken to be "up". Which side was seen is decided by what is known, in this order:

    1. a mesh (`faces`): the faces' winding (counter-clockwise seen from the front), through
       open3d's vertex normals, as ScanNet's reference preprocessing and Pointcept's take them;
    2. `viewpoint`, the sensor position, when the caller knows it: every normal faces it;
    3. a cloud in its sensor's own frame, as a depth camera or one RGB-D fragment delivers it
       (livingroom_fragment.ply): the sensor is the frame's zero, and every normal faces it. Such
       a cloud is recognised by what that zero sees (`_seen_from_origin`): every point lies in
       front of it, within a perspective field of view, and hardly any hides behind a nearer one;
    4. otherwise (a scene fused in world coordinates): towards the cloud's centroid. Every surface
       that bounds the cloud, a room's floor, walls and ceiling, then faces into the room whatever
       the axes; a surface inside the room faces the centroid, which is right for the sides of
       furniture turned to the middle of the room and wrong for those turned away (give the
       `viewpoint` or the mesh where that matters).

    Positions, `viewpoint` and the frame's zero among them, are the file's own coordinates,
    `origin + coord`, so the answer does not depend on where the reader put `origin`.

    Normals of point clouds come from local PCA over at most `max_nn` neighbours within `radius`
    (metres). A point with fewer than two neighbours there has no surface to fit; its normal
    points straight at the viewpoint.
    """
    import open3d as o3d

    # Geometry is fitted relative to `origin`, where the coordinates are small; only the sensor
    # test needs positions in the file's frame, and gets them in float64.
    coord = np.asarray(cloud["coord"], dtype=np.float64)
    origin = np.asarray(cloud.get("origin", np.zeros(3)), dtype=np.float64)
    if "faces" in cloud:
        mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(coord), o3d.utility.Vector3iVector(cloud["faces"].astype(np.int32))
        )
        mesh.compute_vertex_normals()
        normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
        if np.isfinite(normals).all() and len(normals) == len(coord):
            return normals
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    # Each point, then its two nearest neighbours: the sampling density, and where a plane fits.
    search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(coord))
    search.knn_index()
    nearest = np.sqrt(search.knn_search(o3d.core.Tensor(coord), min(3, len(coord)))[1].numpy())
    if viewpoint is not None:
        eye = np.asarray(viewpoint, dtype=np.float64).reshape(3) - origin
    elif len(coord) >= 3 and _seen_from_origin(coord + origin, nearest[:, 1], radius):
        eye = -origin
    else:
        eye = coord.mean(0)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=max_nn))
    pcd.orient_normals_towards_camera_location(eye)
    normals = np.asarray(pcd.normals, dtype=np.float64)
    # open3d fits no plane to fewer than three points (itself and two neighbours) and answers
    # (0, 0, 1) for them: an axis, not a surface.
    unfitted = nearest[:, 2] > radius if len(coord) >= 3 else np.ones(len(coord), dtype=bool)
    unfitted |= ~np.isfinite(normals).all(1) | (np.linalg.norm(normals, axis=1) < 0.5)
    if unfitted.any():
        towards = eye - coord[unfitted]
        length = np.linalg.norm(towards, axis=1, keepdims=True)
        # A point at the viewpoint itself has no direction to it; any unit vector will do.
        normals[unfitted] = np.where(length > 0, towards / np.where(length > 0, length, 1.0), (1.0, 0.0, 0.0))
    return normals.astype(np.float32)


def _seen_from_origin(coord: np.ndarray, spacing: np.ndarray, radius: float) -> bool:
    """Whether the cloud looks as one sensor at the origin sees a scene: every point in front of
    it within `_SENSOR_HALF_ANGLE_DEG` of the mean viewing direction, and at most
    `_SENSOR_MAX_HIDDEN` of the points behind a nearer one on the same line of sight. `spacing`
    is each point's distance to its nearest neighbour.

    Lines of sight are binned at three times the angular spacing of the points (so each bin holds
    a small patch of surface), and a point is hidden when it lies more than `radius` plus 2% of
    its distance (the depth a patch seen at a slant spans within a bin) behind its bin's nearest.
    """
    distance = np.linalg.norm(coord, axis=1)
    if distance.min() <= 0:
        return False
    rays = coord / distance[:, None]
    axis = rays.mean(0)
    if np.linalg.norm(axis) < 1e-6:
        return False
    axis /= np.linalg.norm(axis)
    off_axis = np.arccos(np.clip(rays @ axis, -1.0, 1.0))
    if off_axis.max() > np.radians(_SENSOR_HALF_ANGLE_DEG):
        return False
    # Azimuthal equidistant coordinates around the axis: angles stay angles out to the edge.
    side = np.cross(axis, (1.0, 0.0, 0.0) if abs(axis[0]) < 0.9 else (0.0, 1.0, 0.0))
    side /= np.linalg.norm(side)
    across = np.cross(axis, side)
    azimuth = np.arctan2(rays @ across, rays @ side)
    plane = off_axis[:, None] * np.stack([np.cos(azimuth), np.sin(azimuth)], axis=1)
    step = 3.0 * float(np.median(spacing / distance))
    if not step > 0:
        return False
    cells = np.floor(plane / step).astype(np.int64)
    cells -= cells.min(0)
    _, bin_of = np.unique(cells[:, 0] * (cells[:, 1].max() + 1) + cells[:, 1], return_inverse=True)
    bin_of = bin_of.reshape(-1)
    nearest = np.full(bin_of.max() + 1, np.inf)
    np.minimum.at(nearest, bin_of, distance)
    hidden = distance > nearest[bin_of] * 1.02 + radius
    return float(hidden.mean()) <= _SENSOR_MAX_HIDDEN
