"""Kinetics-format data: every annotation format, the class index, broken and missing videos,
train clips and test views, and a DataLoader with workers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spatiotemporal.data.kinetics import (
    AnnotationError,
    ClassIndex,
    ClipSampling,
    KineticsDataset,
    read_class_folders,
    read_kinetics_csv,
    read_list_file,
)
from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics
from spatiotemporal.data.transforms import ClipTransform
from spatiotemporal.io.errors import InputError

SMALL = ClipTransform(crop_size=48, train_short_side=(48, 56), test_short_side=48)
CLIP = ClipSampling(num_frames=4, stride=2, num_clips=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticKineticsConfig(classes=3, videos_per_class=2, val_per_class=1, test_per_class=1, frames=16, size=64)
    generate_synthetic_kinetics(root, config, progress=False)
    return root


@pytest.fixture(scope="module")
def official_tree(synthetic, tmp_path_factory, video_dir) -> Path:
    """An official-style download: `is_cc` column, 'validate' split, videos in split/class
    folders with mixed extensions, one row without a file and one corrupted video."""
    root = tmp_path_factory.mktemp("official")
    rows = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for i, line in enumerate((synthetic / "train.csv").read_text().splitlines()[1:]):
        label, youtube_id, start, end, _ = line.split(",")
        stem = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        folder = root / "val" / label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(synthetic / "train" / f"{stem}.mp4", folder / f"{stem}{'.mkv' if i % 2 else '.mp4'}")
        rows.append(f"{label},{youtube_id},{start},{end},validate,0")
    rows.append("moving up,NOTDOWNLOAD,10,20,validate,1")  # no file
    shutil.copyfile(video_dir / "corrupted.mp4", root / "val" / "BROKENVIDEO_000001_000011.mp4")
    rows.append("moving left,BROKENVIDEO,1,11,validate,0")
    (root / "validate.csv").write_text("\n".join(rows) + "\n")
    return root


# ---- annotation formats ----------------------------------------------------------------------


def test_official_csv_resolves_files_in_class_folders_with_any_extension(official_tree):
    records = read_kinetics_csv(official_tree / "validate.csv", official_tree)
    assert len(records) == 8
    found = [r for r in records if r.path is not None]
    assert len(found) == 7
    assert {Path(r.path).suffix for r in found} == {".mp4", ".mkv"}
    assert {r.split for r in records} == {"val"}  # 'validate' and 'val' are one split


def test_missing_video_is_counted_and_listed_never_dropped_silently(official_tree):
    with pytest.warns(RuntimeWarning, match="1 missing"):
        dataset = KineticsDataset.from_csv(official_tree / "validate.csv", official_tree, transform=SMALL, clip=CLIP)
    assert len(dataset) == 7
    assert dataset.report.total == 8
    assert dataset.report.missing == [{"key": "NOTDOWNLOAD_000010_000020", "reason": "no video file found for this annotation"}]


def test_test_csv_without_label_column(synthetic):
    dataset = KineticsDataset.from_csv(synthetic / "test.csv", synthetic, mode="test", transform=SMALL, clip=CLIP)
    assert len(dataset) == 3
    assert dataset.labels == [-1, -1, -1]
    assert dataset.classes.names == ("moving down", "moving left", "moving right")  # from classes.json


def test_csv_with_wrong_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("name,start\nabc,1\n")
    with pytest.raises(AnnotationError, match="missing columns") as error:
        read_kinetics_csv(bad, tmp_path)
    assert isinstance(error.value, InputError) and str(bad) in str(error.value)


def test_list_file_paths_may_contain_spaces(synthetic, tmp_path):
    first = sorted((synthetic / "train").glob("*.mp4"))[0]
    (tmp_path / "my videos").mkdir()
    shutil.copyfile(first, tmp_path / "my videos" / "a clip 1.mp4")
    (tmp_path / "list.txt").write_text("my videos/a clip 1.mp4 2\nmy videos/gone.mp4 0\n")
    records = read_list_file(tmp_path / "list.txt")
    assert records[0].path == str(tmp_path / "my videos" / "a clip 1.mp4") and records[0].label == "2"
    assert records[1].path is None
    with pytest.warns(RuntimeWarning):
        dataset = KineticsDataset.from_list_file(tmp_path / "list.txt", transform=SMALL, clip=CLIP, seed=0)
    assert dataset.labels == [2] and len(dataset.classes) == 3  # integer labels index themselves
    assert dataset[0]["video"].shape == (3, 4, 48, 48)


def test_class_folders_become_sorted_classes(official_tree):
    records = read_class_folders(official_tree / "val")
    assert sorted({r.label for r in records}) == ["moving_down", "moving_left", "moving_right"]
    dataset = KineticsDataset.from_folders(official_tree / "val", transform=SMALL, clip=CLIP)
    assert dataset.classes.names == ("moving_down", "moving_left", "moving_right")
    assert len(dataset) == 6


# ---- class index -----------------------------------------------------------------------------


def test_class_index_is_sorted_unique_labels_and_round_trips_as_json(tmp_path):
    index = ClassIndex.from_labels(["b", "a", "c", "a", None])
    assert index.names == ("a", "b", "c")
    path = index.save(tmp_path / "classes.json")
    assert ClassIndex.load(path) == index


def test_kinetics400_names_ship_with_the_package():
    index = ClassIndex.kinetics(400)
    assert len(index) == 400
    assert index.index("abseiling") == 0
    assert index.index("air_drumming") == index.index("air drumming") == 1  # folder spelling
    assert len(ClassIndex.kinetics(600)) == 600


def test_unknown_label_is_a_clear_error():
    with pytest.raises(KeyError, match="not one of the 400 classes"):
        ClassIndex.kinetics(400).index("juggling chainsaws on mars")


# ---- clips -----------------------------------------------------------------------------------


def test_train_sample_is_a_normalised_clip(synthetic):
    dataset = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=CLIP, seed=0)
    sample = dataset[1]
    assert sample["video"].shape == (3, 4, 48, 48) and sample["video"].dtype == torch.float32
    assert sample["label"] == dataset.classes.index(dataset.records[1].label)
    assert sample["error"] == ""


def test_train_clips_depend_on_seed_epoch_and_index_only(synthetic):
    dataset = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=CLIP, seed=3)
    first = dataset[0]["video"]
    assert torch.equal(first, dataset[0]["video"])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0]["video"])


def test_training_clips_are_drawn_as_the_anchor_code_base_draws_them(synthetic):
    from spatiotemporal.io.video import VideoReader

    clip = ClipSampling(num_frames=4, stride=3, anchor="slowfast", anchor_fps=30.0, train_as_anchor=True)
    dataset = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=clip, seed=0)
    with VideoReader(dataset.records[0].path) as reader:
        assert reader.metadata.fps == 10.0
        indices = dataset._frame_indices(reader, np.random.default_rng(0))
    # SlowFast at TARGET_FPS 30: 4 frames every 3 at 30 fps last 0.4 s, 4 frames of this 10 fps video.
    assert np.array_equal(np.diff(indices), [1, 1, 1])
    plain = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, seed=0,
                                     clip=ClipSampling(num_frames=4, stride=3, anchor="slowfast", anchor_fps=30.0))
    with VideoReader(plain.records[0].path) as reader:
        indices = plain._frame_indices(reader, np.random.default_rng(0))
    assert np.array_equal(np.diff(indices), [3, 3, 3])  # the default: mmaction2's draw, whatever the anchor


@pytest.mark.parametrize("clip", [
    ClipSampling(num_frames=4, stride=3, anchor="slowfast", anchor_fps=30.0, train_as_anchor=True),
    ClipSampling(num_frames=4, stride=3, anchor="dmvr", train_as_anchor=True),
    ClipSampling(num_frames=4, stride=1, target_fps=5.0),
], ids=["slowfast-30fps", "dmvr", "by-time"])
def test_cached_training_clips_are_the_decoded_ones(synthetic, clip):
    from spatiotemporal.train.tasks import CachedClips

    dataset = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=clip, seed=4)
    cached = CachedClips(dataset)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            assert torch.equal(cached[index]["video"], dataset[index]["video"]), (epoch, index)


def test_a_broken_video_in_a_cached_training_set_is_replaced_as_in_the_decoding_one(synthetic, tmp_path):
    from spatiotemporal.train.tasks import CachedClips

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic, root)
    dataset = KineticsDataset.from_csv(root / "train.csv", root, transform=SMALL, seed=4)
    broken = Path(dataset.records[0].path)
    broken.write_bytes(b"not a video")
    with pytest.warns(RuntimeWarning, match=f"skipping {re.escape(str(broken))}: "):
        decoded = dataset[0]
    with pytest.warns(RuntimeWarning, match=f"skipping {re.escape(str(broken))}: "):
        cached = CachedClips(dataset)[0]
    assert cached["index"] == decoded["index"] != 0 and str(broken) in cached["error"] == decoded["error"]
    assert torch.equal(cached["video"], decoded["video"])


def test_test_sample_holds_every_temporal_and_spatial_view(synthetic):
    clip = ClipSampling(num_frames=4, stride=2, num_clips=3)
    dataset = KineticsDataset.from_csv(synthetic / "validate.csv", synthetic, mode="test", transform=SMALL, clip=clip)
    views = dataset[0]["video"]
    assert views.shape == (3 * 3, 3, 4, 48, 48)
    assert not torch.equal(views[0], views[3])  # different temporal views


# ---- frames resized at decode (to cache them small) ------------------------------------------


@pytest.mark.parametrize("num_crops", [1, 3])
@pytest.mark.parametrize("geometry", ["slowfast", "mmaction2", "dmvr"])
def test_resizing_at_decode_gives_the_same_test_views_to_the_pixel(video_dir, num_crops, geometry):
    """A dataset that has the reader resize frames to the test short side (as a cache of small
    frames does) hands the model exactly the views evaluation cuts from full-size frames, in the
    geometry of its test protocol: at a short side of 112 the 426x240 clip is 198 wide for
    SlowFast and 199 for mmaction2. ("slowfast_decoder" has no full-size path to compare with:
    its frames are resized at decode either way; the next test checks them against PyAV.)"""
    from spatiotemporal.data.kinetics import VideoRecord

    record = [VideoRecord("pancake", str(video_dir / "flipping_a_pancake.mkv"), "flipping pancake")]
    transform = ClipTransform(crop_size=96, test_short_side=112, num_crops=num_crops, geometry=geometry)
    clip = ClipSampling(num_frames=8, stride=4, num_clips=2, anchor="slowfast")
    views = {
        side: KineticsDataset(record, ClassIndex(("flipping pancake",)), mode="test", clip=clip,
                              transform=transform, decode_short_side=side)[0]
        for side in (None, 112)
    }
    assert views[None]["error"] == views[112]["error"] == ""
    assert views[None]["video"].shape == (2 * num_crops, 3, 8, 96, 96)
    assert torch.equal(views[112]["video"], views[None]["video"])


@pytest.mark.parametrize("clip_name", ["flipping_a_pancake.mkv", "bt709.mp4"])
def test_decoder_resized_test_views_are_swscale_area_frames_cropped(video_dir, tmp_path, clip_name):
    """MViTv2's cached test set (decode_short_side at the test short side, "slowfast_decoder")
    holds the frames torchvision's decoder makes for SlowFast, computed here on their own: PyAV's
    swscale area resize of each decoded frame to round(w * 112 / h) x 112, in BT.601 with the
    range the pixel format implies (torchvision sets no colourspace); then SlowFast's
    `uniform_crop` (slowfast/datasets/transform.py: y = ceil((h - 96) / 2), x = 0, ceil((w - 96)
    / 2) or w - 96), normalised. The generated clip is tagged BT.709, which must not matter."""
    import math

    import av

    from spatiotemporal.data.kinetics import VideoRecord
    from spatiotemporal.io.video import VideoReader
    from tests import video_fixtures

    if clip_name == "bt709.mp4":
        path = video_fixtures.testsrc(tmp_path / clip_name, frames=40, size="240x176", fps=30,
                                      extra=("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"))
    else:
        path = video_dir / clip_name
    transform = ClipTransform(crop_size=96, test_short_side=112, num_crops=3, geometry="slowfast_decoder")
    clip = ClipSampling(num_frames=8, stride=4, num_clips=2, anchor="slowfast_offset")
    item = KineticsDataset([VideoRecord("v", str(path), "a")], ClassIndex(("a",)), mode="test", clip=clip,
                           transform=transform, decode_short_side=112)[0]
    assert item["error"] == ""

    with VideoReader(path) as reader:
        indices = clip.test_indices(reader)
    with av.open(str(path)) as container:
        decoded = [frame for _, frame in zip(range(int(indices.max()) + 1), container.decode(video=0))]
    height, width = decoded[0].height, decoded[0].width
    out_w, out_h = int(math.floor(width * 112 / height + 0.5)), 112  # landscape: util.cpp setFormatDimensions
    colour_range = "JPEG" if decoded[0].format.name.startswith("yuvj") else "MPEG"
    area = np.stack([frame.reformat(out_w, out_h, format="rgb24", interpolation="AREA", src_colorspace="ITU601",
                                    src_color_range=colour_range).to_ndarray() for frame in decoded])
    top = math.ceil((out_h - 96) / 2)
    expected = torch.stack([
        torch.from_numpy(area[view][:, top : top + 96, left : left + 96])
        for view in indices for left in (0, math.ceil((out_w - 96) / 2), out_w - 96)
    ])  # (views, T, H, W, C), clip-major as the dataset orders them
    mean, std = torch.tensor(transform.mean), torch.tensor(transform.std)
    normalised = ((expected.float() / 255 - mean) / std).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(item["video"], normalised, rtol=0, atol=1e-6)


def test_resizing_test_frames_at_decode_to_another_size_is_refused(video_dir):
    """Two resizes (to 160, then to 128) are not one: a cache at another size would change the
    views evaluation sees, so the dataset says so instead."""
    with pytest.raises(ValueError, match="decode_short_side=160 would resize test frames twice"):
        KineticsDataset([], ClassIndex(("a",)), mode="test",
                        transform=ClipTransform(crop_size=112, test_short_side=128), decode_short_side=160)

def test_target_fps_sampling(synthetic):
    clip = ClipSampling(num_frames=4, stride=1, target_fps=5.0)  # every other frame of a 10 fps video
    dataset = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=clip, seed=0)
    assert dataset[0]["video"].shape == (3, 4, 48, 48)


def test_broken_video_is_skipped_in_training_and_reported(official_tree):
    with pytest.warns(RuntimeWarning):
        dataset = KineticsDataset.from_csv(official_tree / "validate.csv", official_tree, transform=SMALL, clip=CLIP, seed=0)
    broken = next(i for i, r in enumerate(dataset.records) if r.key.startswith("BROKENVIDEO"))
    with pytest.warns(RuntimeWarning, match="skipping"):
        sample = dataset[broken]
    assert sample["key"] != dataset.records[broken].key
    assert "BROKENVIDEO" in sample["error"]
    assert [entry["key"] for entry in dataset.report.undecodable] == ["BROKENVIDEO_000001_000011"]


def test_broken_video_can_stop_training_instead(official_tree):
    with pytest.warns(RuntimeWarning):
        dataset = KineticsDataset.from_csv(
            official_tree / "validate.csv", official_tree, transform=SMALL, clip=CLIP, skip_broken=False, seed=0
        )
    broken = next(i for i, r in enumerate(dataset.records) if r.key.startswith("BROKENVIDEO"))
    with pytest.raises(InputError, match="BROKENVIDEO"):
        dataset[broken]


def test_broken_video_in_evaluation_comes_back_marked(official_tree):
    with pytest.warns(RuntimeWarning):
        dataset = KineticsDataset.from_csv(official_tree / "validate.csv", official_tree, mode="test", transform=SMALL, clip=CLIP)
    broken = next(i for i, r in enumerate(dataset.records) if r.key.startswith("BROKENVIDEO"))
    sample = dataset[broken]
    assert "corrupted" not in sample["error"] and "BROKENVIDEO" in sample["error"]
    assert sample["video"].shape == (2 * 3, 3, 4, 48, 48) and not sample["video"].any()
    assert dataset.report.summary() == "8 annotated videos: 6 usable, 1 missing, 1 undecodable"


def test_verify_finds_undecodable_videos_up_front(official_tree, tmp_path):
    with pytest.warns(RuntimeWarning):
        dataset = KineticsDataset.from_csv(official_tree / "validate.csv", official_tree, transform=SMALL, clip=CLIP)
    report = dataset.verify(progress=False)
    assert [entry["key"] for entry in report.undecodable] == ["BROKENVIDEO_000001_000011"]
    assert len(dataset) == 6  # training drops what it cannot read; the report keeps it
    written = report.write(tmp_path / "report.json")
    assert '"usable": 6' in written.read_text()


def test_dataloader_with_workers_collates_train_and_test_samples(synthetic):
    train = KineticsDataset.from_csv(synthetic / "train.csv", synthetic, transform=SMALL, clip=CLIP, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, shuffle=True)))
    assert batch["video"].shape == (4, 3, 4, 48, 48)
    assert batch["label"].dtype == torch.int64 and batch["error"] == [""] * 4
    test = KineticsDataset.from_csv(synthetic / "validate.csv", synthetic, mode="test", transform=SMALL, clip=CLIP)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=3, num_workers=2)))
    assert batch["video"].shape == (3, 6, 3, 4, 48, 48)
    assert np.array_equal(batch["index"].numpy(), [0, 1, 2])


def test_integer_labels_index_the_classes_json_beside_the_list(synthetic, tmp_path):
    """mmaction2's Kinetics lists are `path index` lines; a partial one still has every class."""
    first = sorted((synthetic / "train").glob("*.mp4"))[0]
    shutil.copyfile(first, tmp_path / "clip.mp4")
    (tmp_path / "list.txt").write_text("clip.mp4 1\n")
    ClassIndex(("abseiling", "air drumming", "answering questions", "applauding")).save(tmp_path / "classes.json")
    dataset = KineticsDataset.from_list_file(tmp_path / "list.txt", transform=SMALL, clip=CLIP, seed=0)
    assert dataset.classes.names == ("abseiling", "air drumming", "answering questions", "applauding")
    assert dataset.labels == [1]
