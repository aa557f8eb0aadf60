"""Every reason a user reads about a bad input is one line: at most 300 characters, no terminal
colour codes, no C++ source paths, no traceback. Checked on each way a reason reaches a user: the
CLI's FAILED line (and its JSON), a job's failures row, training's list of skipped videos.

Random bytes named .pth are "not a torch file", not torch's advice to load them unsafely."""

from __future__ import annotations

import fractions
import json
import re
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from spatiotemporal.io.errors import CheckpointError, InputError, PointCloudError
from spatiotemporal.io.points import read_points

MAX_CHARS = 300
CPP_SOURCE = re.compile(r"\.(?:c|cc|cpp|cxx|cu|h|hpp)(?::\d+)+")


def assert_one_readable_line(reason: str) -> None:
    assert reason.strip(), "an empty reason"
    assert "\n" not in reason and "\r" not in reason, reason
    assert len(reason) <= MAX_CHARS, f"{len(reason)} characters: {reason}"
    assert "\x1b" not in reason, repr(reason)
    assert not CPP_SOURCE.search(reason), reason
    assert "Traceback" not in reason and 'File "' not in reason, reason


def write_double_ply(path: Path, coord: np.ndarray) -> Path:
    vertex = np.empty(len(coord), dtype=[(a, "f8") for a in "xyz"])
    vertex["x"], vertex["y"], vertex["z"] = coord.T
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


@pytest.fixture(scope="module")
def bad_scans(tmp_path_factory) -> list[Path]:
    """One file per way a scan goes wrong, each built here."""
    folder = tmp_path_factory.mktemp("bad_scans")
    rng = np.random.default_rng(0)
    room = rng.uniform(0.0, 20.0, (2_000, 3))
    random_bytes = folder / "random_bytes.pth"
    random_bytes.write_bytes(rng.bytes(4096))
    foreign = folder / "foreign_object.pth"
    torch.save({"coord": torch.zeros(4, 3), "scale": fractions.Fraction(1, 3)}, foreign)
    double_as_float = folder / "double_as_float.ply"
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 2000\n"
    header += "property float x\nproperty float y\nproperty float z\nend_header\n"
    double_as_float.write_bytes(header.encode() + room.astype("<f8").tobytes())
    stray = room + (3_000_000.0, 4_000_000.0, 0.0)
    stray[5] = 0.0
    huge = rng.uniform(-1e19, 1e19, (200, 3))
    truncated = write_double_ply(folder / "truncated.ply", room)
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    garbage = folder / "garbage.ply"
    garbage.write_bytes(b"ply\nthis is no header\n" * 20)
    return [
        random_bytes,
        foreign,
        double_as_float,
        write_double_ply(folder / "stray_point.ply", stray),
        write_double_ply(folder / "huge.ply", huge),
        truncated,
        garbage,
    ]


def test_random_bytes_named_pth_are_not_a_torch_scene(tmp_path):
    path = tmp_path / "scene.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert "not a torch file" in info.value.reason and "weights_only" not in info.value.reason
    assert_one_readable_line(info.value.reason)


def test_random_bytes_named_pth_are_not_a_torch_checkpoint(tmp_path):
    from spatiotemporal.convert import read_checkpoint

    path = tmp_path / "weights.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert info.value.reason.startswith("cannot read checkpoint: not a torch file")


def test_a_pth_scene_holding_another_object_names_it_without_unsafe_advice(tmp_path):
    path = tmp_path / "scene.pth"
    torch.save({"coord": torch.zeros(4, 3), "scale": fractions.Fraction(1, 3)}, path)
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert "fractions.Fraction" in info.value.reason and "weights_only" not in info.value.reason
    assert_one_readable_line(info.value.reason)


def open3d_error() -> RuntimeError:
    """A real Open3D failure (its neighbour search on extents near 1e20 m), as it is raised:
    coloured, with the C++ function and source file it came from."""
    from spatiotemporal.layers.point_ops import knn_query

    coord = torch.tensor(np.random.default_rng(0).uniform(-1e20, 1e20, (100, 3)), dtype=torch.float32)
    offset = torch.tensor([100])
    with pytest.raises(RuntimeError) as info:
        knn_query(8, coord, offset, coord, offset)
    assert "\x1b[" in str(info.value) and ".cpp:" in str(info.value)  # what the rule is for
    return info.value


def test_an_input_error_makes_any_reason_one_readable_line():
    message = str(open3d_error())
    error = InputError("scan.ply", f"{message}\n{'more detail ' * 40}")
    assert_one_readable_line(error.reason)
    assert error.reason.startswith("Shape [100, 8] is invalid")
    assert str(error) == f"scan.ply: {error.reason}"


def test_a_failures_row_holds_one_line_for_an_open3d_error():
    from pipelines.job import failure_reason

    reason = failure_reason(open3d_error())
    assert_one_readable_line(reason)
    assert reason.startswith("RuntimeError: Shape [100, 8] is invalid")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "points.pt"
    torch.save({"model": create_model("point_transformer_tiny", num_classes=20).state_dict()}, path)
    return path


def test_the_cli_prints_one_readable_line_per_bad_scan(bad_scans, checkpoint, capsys):
    from spatiotemporal.cli import main

    code = main(["infer", *map(str, bad_scans), "--model", "point_transformer_tiny", "--checkpoint",
                 str(checkpoint), "--device", "cpu", "--json"])
    out = capsys.readouterr()
    assert code == 1
    failed = [line for line in out.err.splitlines() if line.startswith("FAILED ")]
    assert [line.split(": ", 1)[0] for line in failed] == [f"FAILED {path}" for path in bad_scans]
    for line in failed:
        assert_one_readable_line(line.split(": ", 1)[1])
    failures = json.loads(out.out)["failures"]
    assert [row["path"] for row in failures] == list(map(str, bad_scans))
    for row in failures:
        assert_one_readable_line(row["error"])


def test_a_failures_row_holds_one_readable_line_per_bad_scan(bad_scans, checkpoint):
    # What a point-inference job's actor stores for a scan that fails (pipelines/point_inference.py).
    from pipelines.job import failure_reason
    from spatiotemporal.infer import PointSegmenter

    segmenter = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", max_fragments=1)
    for path in bad_scans:
        with pytest.raises(Exception) as info:
            segmenter.predict(str(path))
        assert_one_readable_line(failure_reason(info.value))


def test_trainings_list_of_skipped_videos_holds_one_readable_line_each(video_dir, tmp_path):
    from spatiotemporal.data.kinetics import KineticsDataset
    from spatiotemporal.data.transforms import ClipTransform

    (tmp_path / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    (tmp_path / "cut_short.mp4").write_bytes((video_dir / "cockatoo.mp4").read_bytes()[:30_000])
    broken = ["random_bytes.mp4", "cut_short.mp4", str(video_dir / "corrupted.mp4")]
    (tmp_path / "train.txt").write_text("".join(f"{name} 0\n" for name in broken))
    dataset = KineticsDataset.from_list_file(tmp_path / "train.txt", tmp_path,
                                             transform=ClipTransform(crop_size=32, train_short_side=(32, 40)))
    report = dataset.verify(progress=False)
    assert len(report.undecodable) == 3
    for entry in report.undecodable:
        assert_one_readable_line(entry["reason"])


# ------------------------------------------------------------- what one_line strips, and keeps


def test_torchs_cpp_stack_is_stripped_in_the_form_torch_writes_it():
    # A real torch error with its C++ stack, as TORCH_SHOW_CPP_STACKTRACES=1 makes torch write it.
    import subprocess
    import sys

    from spatiotemporal.io.errors import one_line

    raising = "import torch\ntry:\n    torch.ones(3) + torch.ones(4)\nexcept RuntimeError as e:\n    print(e)"
    message = subprocess.run([sys.executable, "-c", raising], capture_output=True, text=True, check=True,
                             env={"TORCH_SHOW_CPP_STACKTRACES": "1", "TORCH_DISABLE_ADDR2LINE": "1"}).stdout
    assert "Exception raised from infer_size_impl at " in message and len(message) > 1_000
    assert one_line(message) == "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 0"


@pytest.mark.parametrize("text", [
    "Exception raised from the parser: header line 3 is not a property",
    "missing include site.h:2",
    "foo.c:1:2: expected ';' before '}' token",
])
def test_a_users_text_that_looks_like_a_stack_or_a_source_file_is_kept(text):
    from spatiotemporal.io.errors import one_line

    assert one_line(text) == text


def test_a_text_that_stripping_would_empty_is_kept_as_one_line():
    from spatiotemporal.io.errors import one_line

    assert one_line("/src/open3d/core/Tensor.cpp:52:\n") == "/src/open3d/core/Tensor.cpp:52:"


def test_an_open3d_source_path_is_stripped():
    from spatiotemporal.io.errors import one_line

    text = "[Open3D Error] (void f()) /root/Open3D/cpp/open3d/core/nns/NanoFlannIndex.cpp:52: Shape is invalid"
    assert one_line(text) == "Shape is invalid"


# --------------------------------------------------- pickle protocols torch's safe loader reads


def scene_tensors() -> dict:
    return {"coord": torch.rand(50, 3, generator=torch.Generator().manual_seed(0)), "color": torch.zeros(50, 3)}


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_scene_saved_at_pickle_protocol_4_or_5_says_so_and_what_to_do(tmp_path, protocol, zipped):
    path = tmp_path / "scene.pth"
    torch.save(scene_tensors(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.reason == (
        f"unreadable .pth scene: saved with pickle protocol {protocol}: torch's safe loader does not read the"
        " FRAME instruction (and no other loader is used: unpickling can run code); re-save it with"
        " torch.save's default pickle_protocol (2)"
    )


@pytest.mark.parametrize("protocol", [0, 1])
def test_a_legacy_scene_saved_at_pickle_protocol_0_or_1_is_a_torch_file_saved_so(tmp_path, protocol):
    # Protocols 0 and 1 write torch's magic number as text ("L1195...L\n"): still torch's file.
    from spatiotemporal.io.torch_files import is_torch_file

    path = tmp_path / "scene.pth"
    torch.save(scene_tensors(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    assert is_torch_file(path)
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.reason.startswith(
        "unreadable .pth scene: saved with pickle protocol 0 or 1: torch's safe loader does not read the LONG instruction"
    )


def test_a_legacy_checkpoint_saved_at_pickle_protocol_1_is_read(tmp_path):
    from spatiotemporal.convert import read_state_dict

    path = tmp_path / "weights.pth"
    torch.save(scene_tensors(), path, pickle_protocol=1, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(path)["coord"], scene_tensors()["coord"])


# ----------------------------------------- reasons this library builds fit whole where they are made


def assert_built_whole(reason: str) -> None:
    assert_one_readable_line(reason)
    assert not reason.endswith("..."), reason


def test_a_checkpoints_key_mismatch_reason_counts_every_kind_and_names_what_fits(tmp_path):
    # An image model's checkpoint into a space-time one: 33 keys missing, 1 unexpected, 2 of
    # another shape. Listed whole, the keys alone run to 1,500 characters.
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    state = create_model("timesformer_tiny_space_only", num_classes=7).state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "vit.pt")
    with pytest.raises(CheckpointError) as info:
        create_model("timesformer_tiny", num_classes=5, pretrained=str(tmp_path / "vit.pt"))
    reason = info.value.reason
    assert_built_whole(reason)
    assert reason.startswith("spatiotemporal checkpoint does not fit timesformer: missing keys: blocks.0.")
    assert ", ... (33 in all); unexpected keys: extra.weight; shape mismatch keys: head.bias" in reason


def test_a_checkpoint_without_weights_names_the_top_level_keys_that_fit(tmp_path):
    # A run's settings saved without its weights: 40 entries, none a tensor.
    from spatiotemporal.models import create_model

    settings = {f"schedule.stage_{i:02d}.learning_rate_warmup_epochs": 5 for i in range(40)}
    torch.save(settings, tmp_path / "settings.pt")
    with pytest.raises(CheckpointError) as info:
        create_model("timesformer_tiny", pretrained=str(tmp_path / "settings.pt"))
    assert_built_whole(info.value.reason)
    assert info.value.reason.startswith(
        "no state dict found; top-level keys: schedule.stage_00.learning_rate_warmup_epochs, "
    )
    assert info.value.reason.endswith(", ... (40 in all)")


def test_a_scenes_failure_in_prepare_scannet_is_one_line_whatever_the_error(tmp_path):
    # Not an input error: the output folder cannot be made (a file sits where a folder should).
    # Its message carries the path, here deeper than a line holds.
    from spatiotemporal.commands.prepare_scannet import process_scene
    from spatiotemporal.data.synthetic_scannet import write_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    write_dataset(raw, 1, seed=1)
    (scene,) = [p for p in raw.iterdir() if p.is_dir()]
    blocked = tmp_path / ("deep_" * 40) / "file"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("")
    path, reason = process_scene(str(scene), str(blocked / "train" / scene.name))
    assert path == str(scene)
    assert_one_readable_line(reason)
    assert reason.startswith("NotADirectoryError: ")
