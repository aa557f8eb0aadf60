"""The synthetic Kinetics generator: official format, determinism, and classes that differ only
in motion."""

from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest

from spatiotemporal.cli import main
from spatiotemporal.data.kinetics import ClassIndex, read_kinetics_csv
from spatiotemporal.data.synthetic_kinetics import (
    MOTION_KINDS,
    MOTIONS,
    SyntheticKineticsConfig,
    draw_scene,
    generate_synthetic_kinetics,
    render_video,
    track,
)
from spatiotemporal.io.video import probe_video, read_video

CONFIG = SyntheticKineticsConfig(classes=4, videos_per_class=2, val_per_class=1, test_per_class=1, frames=12, size=64, seed=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_kinetics(root, CONFIG, progress=False)
    return root


def test_writes_the_official_csv_layout(dataset):
    with open(dataset / "train.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["label", "youtube_id", "time_start", "time_end", "split"]
    assert len(rows) == 4 * 2 and {r["split"] for r in rows} == {"train"}
    assert all(len(r["youtube_id"]) == 11 for r in rows)
    assert (dataset / "validate.csv").read_text().count(",val\n") == 4
    assert (dataset / "test.csv").read_text().splitlines()[0] == "youtube_id,time_start,time_end,split"
    assert len((dataset / "test_labeled.csv").read_text().splitlines()) == 1 + 4


def test_every_row_has_its_h264_video(dataset):
    records = read_kinetics_csv(dataset / "train.csv", dataset)
    assert all(r.path is not None and r.path.endswith(".mp4") for r in records)
    meta = probe_video(records[0].path)
    assert (meta.codec, meta.width, meta.height, meta.num_frames, meta.fps) == ("h264", 64, 64, 12, 10.0)


def test_class_index_is_the_sorted_motion_names(dataset):
    assert ClassIndex.load(dataset / "classes.json").names == tuple(sorted(MOTIONS[:4]))


def test_same_seed_gives_identical_csvs_and_decoded_frames(dataset, tmp_path):
    again = tmp_path / "again"
    generate_synthetic_kinetics(again, CONFIG, progress=False)
    for name in ("train.csv", "validate.csv", "test.csv", "classes.json"):
        assert (again / name).read_text() == (dataset / name).read_text()
    for record in read_kinetics_csv(dataset / "validate.csv", dataset):
        twin = again / "val" / f"{record.key}.mp4"
        assert np.array_equal(read_video(record.path).numpy(), read_video(twin).numpy())


def test_another_seed_gives_another_dataset(dataset, tmp_path):
    other = SyntheticKineticsConfig(**{**CONFIG.__dict__, "seed": 6})
    generate_synthetic_kinetics(tmp_path, other, progress=False)
    assert (tmp_path / "train.csv").read_text() != (dataset / "train.csv").read_text()


@pytest.mark.parametrize("seed", range(5))
def test_first_frame_is_the_same_whatever_the_class(seed):
    """The scene is drawn before the class's motion is applied, so with one random stream every
    class produces the very same first frame: a single frame carries no class information."""
    firsts = [render_video(m, 8, 48, np.random.default_rng(seed))[0] for m in MOTIONS]
    assert all(np.array_equal(firsts[0], f) for f in firsts[1:])
    later = [render_video(m, 8, 48, np.random.default_rng(seed))[4] for m in MOTIONS]
    assert len({f.tobytes() for f in later}) == len(MOTIONS)  # the motions differ afterwards


@pytest.mark.parametrize("motion", MOTIONS)
def test_object_state_stays_uniformly_distributed_over_time(motion):
    """At the clip's last frame, positions, angles, log-sizes and opacities keep the distribution
    they start with, so a frame from any time says nothing about the class either."""
    rng = np.random.default_rng(0)
    t = np.array([0.0, 1.0])
    states = [track(motion, draw_scene(32, rng), t, 32) for _ in range(800)]
    for values, low, high in (
        ([s.x[-1] for s in states], 0.0, 32.0),
        ([s.y[-1] for s in states], 0.0, 32.0),
        ([np.mod(s.angle[-1], 2 * math.pi) for s in states], 0.0, 2 * math.pi),
        ([np.log(s.half_extent[-1] / 32) for s in states], math.log(0.12), math.log(0.3)),
        ([s.opacity[-1] for s in states], 0.3, 1.0),
    ):
        counts, _ = np.histogram(values, bins=4, range=(low, high))
        assert counts.min() > 150, (motion, counts)  # each quarter holds 200 +- 12 of 800


def test_motions_go_the_way_their_names_say():
    rng = np.random.default_rng(1)
    scene = draw_scene(64, rng)
    t = np.array([0.0, 0.1])
    right, down = track("moving right", scene, t, 64), track("moving down", scene, t, 64)
    assert np.mod(right.x[1] - right.x[0], 64) < 32 and right.y[1] == right.y[0]
    assert np.mod(down.y[1] - down.y[0], 64) < 32 and down.x[1] == down.x[0]
    assert track("zooming in", scene, t, 64).half_extent[1] != track("zooming out", scene, t, 64).half_extent[1]
    fast = track("speeding up", scene, np.array([0.0, 0.1, 0.9, 1.0]), 64)
    step = np.hypot(np.diff(fast.x), np.diff(fast.y))
    assert step[2] > 5 * step[0]  # accelerates


def test_cli_writes_dataset_and_preview(tmp_path):
    code = main(["prepare", "synthetic-kinetics", str(tmp_path), "--classes", "2", "--videos-per-class", "1",
                 "--frames", "8", "--size", "64", "--seed", "1"])  # fmt: skip
    assert code == 0
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "train.csv").read_text().splitlines()) == 1 + 2


def test_cli_rejects_an_odd_size(tmp_path, capsys):
    assert main(["prepare", "synthetic-kinetics", str(tmp_path), "--size", "63"]) == 2
    assert "even" in capsys.readouterr().out


def test_classes_can_be_chosen_by_motion_name(tmp_path):
    config = SyntheticKineticsConfig(
        motions=MOTION_KINDS, videos_per_class=1, val_per_class=1, test_per_class=1, frames=8, size=32
    )
    assert config.classes == 4 and config.names == MOTION_KINDS
    generate_synthetic_kinetics(tmp_path, config, progress=False)
    assert ClassIndex.load(tmp_path / "classes.json").names == tuple(sorted(MOTION_KINDS))
    assert {row["label"] for row in csv.DictReader((tmp_path / "train.csv").open())} == set(MOTION_KINDS)


def test_motion_kinds_hold_no_motion_together_with_its_time_reversal():
    """MOTIONS lists each motion beside its reversal (right/left, clockwise/counterclockwise, ...)."""
    reversal_pair = {m: i // 2 for i, m in enumerate(MOTIONS)}
    assert len({reversal_pair[m] for m in MOTION_KINDS}) == len(MOTION_KINDS)


def test_a_count_that_disagrees_with_the_named_motions_is_refused():
    with pytest.raises(ValueError, match="classes=3 disagrees with the 4 motions named"):
        SyntheticKineticsConfig(classes=3, motions=MOTION_KINDS)
    config = SyntheticKineticsConfig(motions=MOTION_KINDS)
    assert dataclasses.replace(config, seed=1).names == MOTION_KINDS


def test_unknown_or_repeated_motions_are_refused():
    with pytest.raises(ValueError, match=r"unknown motions \['moving sideways'\]"):
        SyntheticKineticsConfig(motions=("moving right", "moving sideways"))
    with pytest.raises(ValueError, match="motions must be distinct"):
        SyntheticKineticsConfig(motions=("moving right", "moving right"))


def test_cli_takes_the_motions_by_name(tmp_path):
    code = main(["prepare", "synthetic-kinetics", str(tmp_path), "--motions", "zooming in, rotating clockwise",
                 "--videos-per-class", "1", "--frames", "8", "--size", "32", "--no-preview"])  # fmt: skip
    assert code == 0
    assert ClassIndex.load(tmp_path / "classes.json").names == ("rotating clockwise", "zooming in")


def test_cli_motions_kinds_names_the_motion_kinds(tmp_path):
    code = main(["prepare", "synthetic-kinetics", str(tmp_path), "--motions", "kinds",
                 "--videos-per-class", "1", "--frames", "8", "--size", "32", "--no-preview"])  # fmt: skip
    assert code == 0
    assert ClassIndex.load(tmp_path / "classes.json").names == tuple(sorted(MOTION_KINDS))


def test_cli_refuses_classes_and_motions_together(tmp_path, capsys):
    code = main(["prepare", "synthetic-kinetics", str(tmp_path), "--classes", "3", "--motions", "kinds"])
    assert code == 2
    assert "give --classes (the first N motions) or --motions (the classes by name), not both" in capsys.readouterr().out
    assert not (tmp_path / "train.csv").exists()
