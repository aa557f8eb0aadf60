"""`spatiotemporal prepare kinetics`: Ray re-encoding of a small Kinetics tree that holds a broken
file, a rotated file and an annotation row without a video."""

from __future__ import annotations

import csv
import os
import shutil

import av
import pytest

from spatiotemporal.cli import main
from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics
from spatiotemporal.io.video import probe_video

ROTATED = "ROTATEDclip_000000_000010"
BROKEN = "BROKENclip1_000005_000015"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, video_dir):
    """SRC: synthetic train videos in class folders, the rotated sample and the corrupted sample
    renamed as Kinetics clips, and a train.csv naming all of them plus one never downloaded.
    The command runs once here (Ray start-up dominates); the tests read what it wrote."""
    base = tmp_path_factory.mktemp("prepare")
    synthetic = base / "synthetic"
    generate_synthetic_kinetics(
        synthetic,
        SyntheticKineticsConfig(classes=2, videos_per_class=2, val_per_class=1, test_per_class=1, frames=16, size=64),
        progress=False,
    )
    src = base / "src"
    lines = (synthetic / "train.csv").read_text().splitlines()
    for line in lines[1:]:
        label, youtube_id, start, end, _ = line.split(",")
        folder = src / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        shutil.copyfile(synthetic / "train" / f"{stem}.mp4", folder / f"{stem}.mp4")
    (src / "train" / "moving up").mkdir()
    shutil.copyfile(video_dir / "rotated_90.mov", src / "train" / "moving up" / f"{ROTATED}.mov")
    shutil.copyfile(video_dir / "corrupted.mp4", src / "train" / "moving up" / f"{BROKEN}.mp4")
    lines += ["moving up,ROTATEDclip,0,10,train", "moving up,BROKENclip1,5,15,train", "moving up,NEVERLOADED,1,11,train"]
    (src / "train.csv").write_text("\n".join(lines) + "\n")
    shutil.copyfile(synthetic / "classes.json", src / "classes.json")
    out = base / "out"
    code = main(["prepare", "kinetics", str(src), str(out), "--short-side", "96", "--keyint", "4", "--num-cpus", "2"])
    return src, out, code


def test_every_readable_video_is_reencoded_to_the_short_side(prepared):
    _, out, code = prepared
    assert code == 0
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 4 + 1  # four synthetic clips and the rotated one
    for path in videos:
        meta = probe_video(path)
        assert meta.codec == "h264" and min(meta.width, meta.height) == 96


def test_rotation_is_applied_so_portrait_stays_portrait(prepared):
    _, out, _ = prepared
    meta = probe_video(out / "train" / "moving up" / f"{ROTATED}.mp4")
    assert (meta.width, meta.height, meta.rotation) == (96, 170, 0)  # 320x568 shown, scaled


def test_keyframes_come_at_the_requested_interval(prepared):
    _, out, _ = prepared
    path = next((out / "train" / "moving left").glob("*.mp4"))
    with av.open(str(path)) as container:
        keys = [i for i, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keys == [0, 4, 8, 12]


def test_failures_list_the_broken_file_and_the_missing_row_with_reasons(prepared):
    _, out, _ = prepared
    with open(out / "failures.csv", newline="") as handle:
        failures = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(failures) == {f"train/moving up/{BROKEN}.mp4", "train.csv:NEVERLOADED_000001_000011"}
    assert "Invalid NAL unit size" in failures[f"train/moving up/{BROKEN}.mp4"]
    assert "@ 0x" not in failures[f"train/moving up/{BROKEN}.mp4"]  # no addresses in reasons
    assert failures["train.csv:NEVERLOADED_000001_000011"] == "no video file for this annotation row"


def test_clean_annotation_keeps_only_converted_rows(prepared):
    src, out, _ = prepared
    kept = (out / "train.csv").read_text().splitlines()
    assert kept[0] == "label,youtube_id,time_start,time_end,split"
    assert len(kept) == 1 + 5
    assert not any("BROKENclip1" in line or "NEVERLOADED" in line for line in kept)
    assert (out / "classes.json").read_text() == (src / "classes.json").read_text()


def test_no_partial_files_are_left_behind(prepared):
    _, out, _ = prepared
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_a_second_run_skips_finished_files(prepared, capsys):
    src, out, _ = prepared
    done = next(out.rglob("*.mp4"))
    before = done.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["prepare", "kinetics", str(src), str(out), "--short-side", "96", "--keyint", "4", "--num-cpus", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train/moving up/BROKENclip1_000005_000015.mp4" in (out / "failures.csv").read_text()
    assert "5 already done, 1 failed before, 0 to re-encode" in printed
    assert done.stat().st_mtime_ns == before


def test_missing_source_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare", "kinetics", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "not a directory" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")


def test_scale_filter_keeps_the_short_side():
    from spatiotemporal.commands.prepare_kinetics import scale_filter

    assert scale_filter(320) == "scale=w='if(lt(iw,ih),320,-2)':h='if(lt(iw,ih),-2,320)'"
