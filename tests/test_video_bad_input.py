"""Every kind of bad video raises VideoDecodeError naming the file and the reason: never a hang,
a crash, or an empty tensor. A file that decodes partly says how far it got."""

from __future__ import annotations

from pathlib import Path

import pytest

import video_fixtures as vf
from spatiotemporal.io.errors import InputError, VideoDecodeError
from spatiotemporal.io.video import VideoReader, probe_by_reading, probe_video, read_video

BACKENDS = ("auto", "decord", "pyav", "torchcodec")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bad")
    good_faststart = vf.h264_mp4(out / "good_faststart.mp4", frames=24)  # index (moov) first
    good_index_last = vf.testsrc(out / "good_index_last.mp4", frames=24)  # index (moov) last
    empty = out / "empty.mp4"
    empty.write_bytes(b"")
    text = out / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 40)
    return {
        "missing": out / "does_not_exist.mp4",
        "empty": empty,
        "text": text,
        "audio_only": vf.audio_only(out / "speech.mp4"),
        "truncated_index_first": vf.truncated_copy(good_faststart, out / "cut_faststart.mp4"),
        "truncated_index_last": vf.truncated_copy(good_index_last, out / "cut_index_last.mp4"),
        "directory": out,
    }


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing", "file does not exist"),
        ("empty", r"file is empty \(0 bytes\)"),
        ("text", "not a readable media container"),
        ("audio_only", r"no video stream \(audio only\)"),
        ("truncated_index_first", "truncated: the container declares 24 frames but holds data for 10"),
        ("truncated_index_last", "truncated MP4: box 'mdat' at byte 40 needs"),
        ("directory", "not a regular file"),
    ],
)
@pytest.mark.parametrize("entry", ["probe", "reader"])
def test_bad_file_names_path_and_reason(bad, name, reason, entry):
    path = bad[name]
    with pytest.raises(VideoDecodeError, match=reason) as caught:
        probe_video(path) if entry == "probe" else VideoReader(path)
    assert isinstance(caught.value, InputError)
    assert caught.value.path == str(path) and str(path) in str(caught.value)


def test_truncated_file_says_how_far_it_decodes(bad):
    with pytest.raises(VideoDecodeError) as caught:
        read_video(bad["truncated_index_first"])
    # 10 of 24 packets survive the cut; the decoder turns 7 of them into pictures before the data
    # runs out (x264's B-frame delay holds the rest).
    assert caught.value.decoded_frames == 7
    assert "decoded 7 frames before the failure" in str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupted_sample_fails_with_frames_decoded(video_dir, backend):
    path = video_dir / "corrupted.mp4"
    with pytest.raises(VideoDecodeError) as caught:
        read_video(path, backend=backend)
    assert caught.value.path == str(path)
    assert caught.value.decoded_frames == 28  # the h264 stream breaks at frame 28 of 50
    assert "decoded 28 frames before the failure" in str(caught.value)


def test_corrupted_sample_is_caught_by_a_full_decode_check(video_dir):
    path = video_dir / "corrupted.mp4"
    assert probe_video(path).num_frames == 50  # the header alone looks healthy
    with pytest.raises(VideoDecodeError, match="decoding failed") as caught:
        probe_by_reading(path, check_decode=True)
    assert caught.value.decoded_frames == 28


def test_unknown_backend_is_a_usage_error(video_dir):
    with pytest.raises(ValueError, match="backend must be one of"):
        VideoReader(video_dir / "cockatoo.mp4", backend="opencv")


def test_input_errors_survive_pickling_as_ray_carries_them_out_of_workers(video_dir):
    import pickle

    with pytest.raises(VideoDecodeError) as caught:
        read_video(video_dir / "corrupted.mp4")
    error = caught.value
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is VideoDecodeError
    assert (str(copy), copy.path, copy.reason, copy.decoded_frames) == (
        str(error), error.path, error.reason, error.decoded_frames)
