"""`spatiotemporal probe PATH... [--json]`: one line per file, errors included, exit 1 if any failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import video_fixtures as vf
from spatiotemporal.cli import main

SCRIPT = Path(sys.executable).with_name("spatiotemporal")


@pytest.fixture
def probe(capsys):
    """Run `spatiotemporal probe ARGS` in this process (a fresh interpreter pays for torch)."""

    def run(*args: str) -> SimpleNamespace:
        returncode = main(["probe", *args])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)

    return run


def test_probe_prints_one_line_per_good_file(probe, video_dir):
    result = probe(str(video_dir / "flipping_a_pancake.mkv"), str(video_dir / "rotated_90.mov"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"{video_dir / 'flipping_a_pancake.mkv'}: h264 426x240, 310 (derived) frames, 30.000 fps, 10.333 s, audio",
        f"{video_dir / 'rotated_90.mov'}: h264 320x568, rotated 90, 3 frames, 30.000 fps, 0.100 s, no audio",
    ]


def test_probe_json_carries_every_metadata_field(probe, video_dir):
    result = probe("--json", str(video_dir / "cockatoo.mp4"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record == {
        "path": str(video_dir / "cockatoo.mp4"),
        "num_frames": 280,
        "fps": 20.0,
        "variable_frame_rate": False,
        "duration": 14.0,
        "width": 1280,
        "height": 720,
        "rotation": 0,
        "codec": "h264",
        "has_audio": True,
        "frame_count_derived": False,
        "backend": "pyav",
    }


def test_probe_reports_every_file_and_exits_1_when_any_failed(probe, video_dir, tmp_path):
    missing = tmp_path / "gone.mp4"
    audio = vf.audio_only(tmp_path / "speech.mp4")
    paths = [missing, video_dir / "corrupted.mp4", video_dir / "rotated_90.mov", audio]
    result = probe("--json", *map(str, paths))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in paths]  # bad files do not stop the run
    assert records[0]["error"] == "file does not exist"
    assert records[1]["error"].startswith("decoding failed")
    assert "decoded 28 frames" in records[1]["error"]
    assert records[2]["num_frames"] == 3
    assert records[3]["error"] == "no video stream (audio only)"


def test_probe_text_mode_sends_errors_to_stderr(probe, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    result = probe(str(empty))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"{empty}: ERROR: file is empty (0 bytes)"


def test_quick_probe_reads_only_the_header(probe, video_dir):
    result = probe("--quick", "--json", str(video_dir / "corrupted.mp4"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_frames"] == 50


def test_quick_text_probe_builds_no_reader(probe, video_dir, monkeypatch):
    """Text lines name no backend, so --quick reads the header and first frame without a reader."""
    from spatiotemporal.io.video import VideoReader

    def no_reader(*args, **kwargs):
        raise AssertionError("a VideoReader was built")

    monkeypatch.setattr(VideoReader, "__init__", no_reader)
    result = probe("--quick", str(video_dir / "rotated_90.mov"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{video_dir / 'rotated_90.mov'}: h264 320x568, rotated 90")


def test_console_script_exits_1_on_a_bad_file(video_dir, tmp_path):
    missing = tmp_path / "gone.mp4"
    command = [str(SCRIPT), "probe", "--quick", str(missing), str(video_dir / "rotated_90.mov")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == f"{missing}: ERROR: file does not exist"
    assert result.stdout.startswith(f"{video_dir / 'rotated_90.mov'}: h264 320x568, rotated 90")


def test_probe_help_does_not_import_torch():
    code = "import sys; from spatiotemporal.cli import build_parser; build_parser(['probe']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False"
