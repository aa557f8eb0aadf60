"""Published weights by name, fetched from a real HTTP server on loopback (nothing leaves the
machine): download then cache hit with the server gone, a hash mismatch, a cut transfer resumed,
two processes racing for one file, the offline message, the hub route through HF_ENDPOINT, and a
catalogue entry whose file loads strictly into its model and predicts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spatiotemporal.weights import WeightsError, get_entry, manual_path, weights_file
from tests.weights_server import WeightsServer, as_published, cache, etag, mirror_path, saved, server  # noqa: F401 (fixtures)

SWIN = "swin3d_t.k400_official"  # a Video Swin release: no published hash


def test_a_download_lands_in_the_cache_and_is_used_with_the_server_gone(server, cache):
    body = os.urandom(300_000)
    server.files[mirror_path(SWIN)] = body
    path = weights_file(SWIN, progress=False)
    assert path == cache / "weights" / SWIN / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    assert path.read_bytes() == body
    # The digest of what arrived is kept, for `weights verify` (no hash is published for it).
    assert Path(str(path) + ".sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    server.stop()
    assert weights_file(SWIN, progress=False) == path


def test_a_file_whose_hash_differs_from_torchvisions_is_deleted_and_named(server, cache):
    server.files[mirror_path("mvitv2_s.k400")] = b"not the published weights" * 1000
    with pytest.raises(WeightsError) as err:
        weights_file("mvitv2_s.k400", progress=False)
    message = str(err.value)
    digest = hashlib.sha256(b"not the published weights" * 1000).hexdigest()
    assert message.startswith("mvitv2_s.k400: ") and "\n" not in message
    assert f"SHA-256 {digest}, but the catalogue expects ae3be167; the file was deleted" in message
    folder = cache / "weights" / "mvitv2_s.k400"
    assert not (folder / "mvit_v2_s-ae3be167.pth").exists() and not (folder / "mvit_v2_s-ae3be167.pth.part").exists()


def test_a_transfer_cut_halfway_resumes_from_where_it_stopped(server, cache):
    body = os.urandom(1_000_000)
    path = mirror_path(SWIN)
    server.files[path] = body
    server.cut_next.add(path)
    with pytest.raises(WeightsError, match="broke off after 500000 of 1000000 bytes; run again to resume it"):
        weights_file(SWIN, progress=False)
    assert weights_file(SWIN, progress=False).read_bytes() == body
    gets = [(method, asked) for method, p, asked in server.requests if p == path and method == "GET"]
    assert gets == [("GET", ""), ("GET", "bytes=500000-")]
    assert server.if_ranges == [etag(body)]  # resumed only as long as the file is the same version


_RACER = """
import sys
from spatiotemporal.weights import weights_file
print(weights_file(sys.argv[1], progress=False))
"""


def test_two_processes_asking_at_once_download_the_file_once(server, cache):
    body = os.urandom(2_000_000)
    server.files[mirror_path(SWIN)] = body
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, SWIN], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(manual_path(get_entry(SWIN)))}
    assert [m for m, p, _ in server.requests if p == mirror_path(SWIN)] == ["GET"]
    assert manual_path(get_entry(SWIN)).read_bytes() == body


def test_offline_a_missing_file_is_one_line_naming_entry_url_and_path(server, cache, monkeypatch):
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        weights_file(SWIN)
    target = cache / "weights" / SWIN / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    assert str(err.value) == (
        f"{SWIN}: offline; put {server.url}{mirror_path(SWIN)} at {target}")
    assert server.requests == []


def test_offline_a_file_copied_by_hand_is_verified_and_used(server, cache, monkeypatch):
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    entry = get_entry("swin3d_t.k400")  # torchvision's: its name carries a SHA-256 prefix
    manual_path(entry).parent.mkdir(parents=True)
    manual_path(entry).write_bytes(b"a file that is not swin3d_t-7615ae03")
    with pytest.raises(WeightsError, match=r"swin3d_t.k400: .* has SHA-256 [0-9a-f]{64}, but the catalogue "
                                           r"expects 7615ae03; replace or delete the file"):
        weights_file("swin3d_t.k400")
    other = manual_path(get_entry(SWIN))
    other.parent.mkdir(parents=True)
    other.write_bytes(b"copied by hand")
    assert weights_file(SWIN) == other


def test_a_hub_repo_comes_through_huggingface_hub_from_hf_endpoint_and_then_offline(server, cache, monkeypatch):
    entry = get_entry("timesformer_base.k400_hf")
    config = json.dumps({"model_type": "timesformer", "num_frames": 8, "image_size": 224}).encode()
    server.files[f"/{entry.hf_repo}/resolve/main/pytorch_model.bin"] = b"weights bytes"
    server.files[f"/{entry.hf_repo}/resolve/main/config.json"] = config
    path = weights_file(entry.name, progress=False)
    assert path.name == "pytorch_model.bin" and path.read_bytes() == b"weights bytes"
    assert (path.parent / "config.json").read_bytes() == config  # beside it, where the converter reads it
    assert str(path).startswith(str(cache.parent / "hf"))
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_file(entry.name) == path


def test_a_catalogue_entry_loads_strictly_into_its_model_and_predicts(server, cache):
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    source = create_model("swin3d_t").eval()
    server.files[mirror_path(SWIN)] = saved(as_published(SWIN, source.state_dict()))
    model = create_model("swin3d_t", weights="k400_official").eval()  # strict by default
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), source(clip), rtol=0, atol=0)
    assert model.num_classes == 400


def test_weights_and_a_file_together_are_refused(server, cache):
    from spatiotemporal.models import create_model

    with pytest.raises(ValueError, match="give weights= .* or pretrained= .*, not both"):
        create_model("swin3d_t", weights="k400_official", pretrained="x.pth")


def test_weights_of_another_model_are_named_as_such(cache):
    from spatiotemporal.models import create_model

    with pytest.raises(WeightsError, match="weights mvitv2_s.k400 are for mvitv2_s, not swin3d_t"):
        create_model("swin3d_t", weights="mvitv2_s.k400")


def test_a_file_replaced_between_the_cut_and_the_resume_is_downloaded_whole_never_spliced(server, cache):
    old, new = os.urandom(1_000_000), os.urandom(1_000_000)
    path = mirror_path(SWIN)
    server.files[path] = old
    server.cut_next.add(path)
    with pytest.raises(WeightsError, match="broke off after 500000 of 1000000 bytes"):
        weights_file(SWIN, progress=False)
    server.files[path] = new  # the publisher put up another version meanwhile
    assert weights_file(SWIN, progress=False).read_bytes() == new
    assert server.if_ranges == [etag(old)]  # the server saw which version the part holds, and sent all of `new`


def test_a_server_ignoring_if_range_whose_file_shrank_gets_a_fresh_download(server, cache):
    old, new = os.urandom(1_000_000), os.urandom(300_000)
    path = mirror_path(SWIN)
    server.files[path] = old
    server.cut_next.add(path)
    with pytest.raises(WeightsError, match="broke off after 500000 of 1000000 bytes"):
        weights_file(SWIN, progress=False)
    server.files[path], server.ignore_if_range = new, True  # a 416 "bytes */300000" to the resume
    assert weights_file(SWIN, progress=False).read_bytes() == new
    assert [asked for m, p, asked in server.requests if p == path] == ["", "bytes=500000-", ""]


def test_a_server_ignoring_if_range_whose_file_grew_gets_a_fresh_download(server, cache):
    old, new = os.urandom(1_000_000), os.urandom(1_400_000)
    path = mirror_path(SWIN)
    server.files[path] = old
    server.cut_next.add(path)
    with pytest.raises(WeightsError, match="broke off after 500000 of 1000000 bytes"):
        weights_file(SWIN, progress=False)
    server.files[path], server.ignore_if_range = new, True  # a 206 for bytes 500000- of 1400000
    assert weights_file(SWIN, progress=False).read_bytes() == new


def test_a_cached_file_changed_after_its_digest_was_recorded_is_hashed_again_and_refused(server, cache):
    body = os.urandom(200_000)
    server.files[mirror_path(SWIN)] = body
    path = weights_file(SWIN, progress=False)
    path.write_bytes(b"another file copied over it")  # or a truncated one: size and mtime change
    with pytest.raises(WeightsError) as err:
        weights_file(SWIN, progress=False)
    digest = hashlib.sha256(b"another file copied over it").hexdigest()
    assert str(err.value) == (f"{SWIN}: {path} has SHA-256 {digest}, but it had when it arrived "
                              f"{hashlib.sha256(body).hexdigest()}; replace or delete the file")


_FAILING_HOLDER = """
import sys, time
from pathlib import Path
from spatiotemporal.weights.download import WeightsError, install_file

def slow_failure(partial):
    time.sleep(2)
    raise WeightsError("x.pth: the driver's node sent no part of x.pth within 2 s")

start = time.monotonic()
try:
    install_file(Path(sys.argv[1]), slow_failure, "", "x.pth", "the driver's node")
except WeightsError as err:
    print(f"{time.monotonic() - start:.2f} {err}")
"""


def test_processes_waiting_on_a_transfer_that_fails_fail_with_its_reason_not_after_their_own_tries(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "SPATIOTEMPORAL_CACHE": str(tmp_path)}
    waiters = [subprocess.Popen([sys.executable, "-c", _FAILING_HOLDER, str(tmp_path / "x.pth")], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    lines = [waiter.communicate(timeout=120)[0].strip() for waiter in waiters]
    seconds = sorted(float(line.split(" ", 1)[0]) for line in lines)
    assert {line.split(" ", 1)[1] for line in lines} == {"x.pth: the driver's node sent no part of x.pth within 2 s"}
    assert seconds[-1] < 3.5, seconds  # one try of 2 s for all three, not 2, 4 and 6 s


def test_every_offline_line_is_short_and_names_the_url_and_target_once(monkeypatch):
    from spatiotemporal.weights import ENTRIES, manual_path, source_url

    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", "/home/alice/.cache/spatiotemporal")
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    monkeypatch.delenv("SPATIOTEMPORAL_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for entry in (e for e in ENTRIES if e.downloadable):
        with pytest.raises(WeightsError) as err:
            weights_file(entry.name)
        line = str(err.value)
        assert len(line) <= 300 and "\n" not in line, line
        assert line.startswith(f"{entry.name}: offline; put "), line
        url_part = source_url(entry) if len(entry.hf_files) < 2 else source_url(entry).rsplit("/", 1)[0]
        assert line.count(url_part) == 1 and line.count(str(manual_path(entry).parent)) == 1, line


def test_an_unreachable_server_is_one_line_naming_its_url_once(server, cache):
    server.stop()
    with pytest.raises(WeightsError) as err:
        weights_file(SWIN, progress=False)
    url = f"{server.url}{mirror_path(SWIN)}"
    assert str(err.value).startswith(f"{SWIN}: cannot download (") and str(err.value).count(url) == 1
    assert str(err.value).endswith(f"; put {url} at {manual_path(get_entry(SWIN))}")


def test_a_mirror_with_credentials_is_fetched_with_them_and_never_prints_them(server, cache, monkeypatch, capfd):
    server.auth = ("bob", "s3cr3tTOKEN")
    authed = server.url.replace("http://", "http://bob:s3cr3tTOKEN@")
    monkeypatch.setenv("SPATIOTEMPORAL_WEIGHTS_MIRROR", authed)
    body = os.urandom(100_000)
    server.files[mirror_path(SWIN)] = body
    assert weights_file(SWIN, progress=True).read_bytes() == body
    server.files[mirror_path("mvitv2_s.k400")] = b"not the published weights"
    messages = []
    for name in ("mvitv2_s.k400", "swin3d_s.k400"):  # a hash mismatch; a 404
        with pytest.raises(WeightsError) as err:
            weights_file(name, progress=False)
        messages.append(str(err.value))
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        weights_file("swin3d_b.k400")
    messages.append(str(err.value))
    out, errors = capfd.readouterr()
    assert "HTTP 404" in messages[1] and server.url in messages[2]
    assert not any("s3cr3t" in text for text in [*messages, out, errors]), messages


def test_a_hub_that_is_down_is_one_line_at_once_naming_the_endpoint_in_use(server, cache, capfd, caplog):
    import time

    server.stop()
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        weights_file("timesformer_hr.k400_hf", progress=False)
    seconds = time.monotonic() - start
    out, errors = capfd.readouterr()
    repo = get_entry("timesformer_hr.k400_hf").hf_repo
    assert str(err.value).startswith("timesformer_hr.k400_hf: cannot download (")
    assert f"put {server.url}/{repo}/resolve/main/{{pytorch_model.bin,config.json}} in " in str(err.value)
    assert "huggingface.co" not in str(err.value)
    assert seconds < 5 and "Retrying" not in errors + caplog.text


def test_verify_keeps_a_hub_files_digest_in_our_cache_not_in_the_hubs_snapshot(server, cache):
    from spatiotemporal.weights import verify

    entry = get_entry("timesformer_base.k400_hf")
    server.files[f"/{entry.hf_repo}/resolve/main/pytorch_model.bin"] = b"weights bytes"
    server.files[f"/{entry.hf_repo}/resolve/main/config.json"] = b"{}"
    path = weights_file(entry.name, progress=False)
    assert verify(entry) == ("ok", str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "pytorch_model.bin"]
    records = list((cache / "digests").iterdir())
    assert [r.read_text().split()[0] for r in records] == [hashlib.sha256(b"weights bytes").hexdigest()]
