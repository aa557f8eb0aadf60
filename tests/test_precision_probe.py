"""`--precision auto` on a CPU: bf16 only where a measured probe finds it clearly faster than fp32
at the model's own matmul shapes, the timings cached per machine and torch version.

The decision tests inject a timer that answers from given GFLOP/s, and set the machine's load
average, so they are exact and deterministic; one test runs the real timer and checks only what it
reports. Another node sharing the cache file is this machine under another CPU identity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from spatiotemporal.models import create_model
from spatiotemporal import precision as precision_module
from spatiotemporal.precision import (
    BF16_MARGIN,
    PROBE_MAX_PAIRS,
    PROBE_MAX_ROWS,
    PROBE_MAX_SPREAD,
    MatmulShape,
    choose_precision,
    machine_identity,
    model_matmul_shapes,
    precision_cache_path,
    probe_precision,
    time_in_pairs,
)

CPU = torch.device("cpu")
# The Xeon (AVX512-BF16, no AMX): 3136x768x3072 at 206 GFLOP/s in fp32, 142 in bf16.
XEON_MLP = MatmulShape(3136, 768, 3072, 12)


class RatedTimer:
    """A stand-in for the clock: one matmul of a shape takes its FLOPs over the GFLOP/s given for
    its dtype (per (in, out) features where `rates` maps them, else for every shape), times the
    load at that call (`load[i]` for the i-th call, 1 where not given: an idle machine)."""

    def __init__(self, fp32: float | dict, bf16: float | dict, load: dict[int, float] | None = None):
        self.rates = {torch.float32: fp32, torch.bfloat16: bf16}
        self.load = load or {}
        self.calls: list[tuple[MatmulShape, torch.dtype]] = []

    def __call__(self, shape: MatmulShape, dtype: torch.dtype) -> float:
        slowdown = self.load.get(len(self.calls), 1.0)
        self.calls.append((shape, dtype))
        rate = self.rates[dtype]
        if isinstance(rate, dict):
            rate = rate[(shape.in_features, shape.out_features)]
        return shape.flops / (rate * 1e9) * slowdown


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "precision_probe.json"


CORES = os.cpu_count() or 1


@pytest.fixture(autouse=True)
def load_average(monkeypatch) -> list[float]:
    """The 1-minute load averages the machine reports, one per reading (the last one repeats):
    idle unless a test says otherwise."""
    readings = [0.0]

    def getloadavg():
        value = readings.pop(0) if len(readings) > 1 else readings[0]
        return (value, value, value)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    return readings


def own_section(cache: Path, section: str = "timings") -> dict:
    """This machine's and this torch's timings (or traced shapes) in the cache file."""
    entries = json.loads(cache.read_text())["entries"]
    return entries[f"{machine_identity()}; torch {torch.__version__}"][section]


def act_as_another_node(monkeypatch, field: str) -> None:
    """This process as a node of another CPU kind, or with another torch, sharing the cache file."""
    if field == "machine":
        monkeypatch.setattr(precision_module, "machine_identity",
                            lambda: "Intel(R) Xeon(R) Platinum 8480+; flags 0123456789abcdef")
    else:
        monkeypatch.setattr(torch, "__version__", "2.1.0")


def test_bf16_is_kept_off_where_it_is_slower_than_fp32_despite_the_cpu_flags(cache):
    probe = probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    assert probe.fp32_gflops == pytest.approx((206.0,)) and probe.bf16_gflops == pytest.approx((142.0,))
    assert probe.bf16_speedup == pytest.approx(142 / 206)
    assert probe.choice == "fp32"


def test_bf16_is_chosen_where_it_is_clearly_faster(cache):
    choice = choose_precision("auto", CPU, [XEON_MLP], timer=RatedTimer(fp32=100, bf16=250), cache_path=cache)
    assert (choice.precision, choice.dtype) == ("bf16", torch.bfloat16)
    assert choice.probe.bf16_speedup == pytest.approx(2.5)
    assert choice.reason == "bf16 matmuls ran 2.50x faster than fp32 at the model's shapes (bf16 needs >= 1.1x)"


@pytest.mark.parametrize(("bf16_rate", "chosen"), [(105, "fp32"), (108, "fp32"), (112, "bf16")])
def test_bf16_must_beat_fp32_by_the_margin(tmp_path, bf16_rate, chosen):
    assert BF16_MARGIN == 1.1
    probe = probe_precision([XEON_MLP], timer=RatedTimer(fp32=100, bf16=bf16_rate),
                            cache_path=tmp_path / f"{bf16_rate}.json")
    assert probe.choice == chosen


def test_speedup_weighs_each_shape_by_the_flops_the_model_spends_in_it(cache):
    """MLP: 12 calls, bf16 twice as fast; a projection 4 times smaller, 4 calls, bf16 half as fast.
    The MLP is 12x the FLOPs, so the model's matmuls take 0.13 s-units in fp32 against 0.08."""
    mlp, projection = MatmulShape(1024, 768, 3072, 12), MatmulShape(1024, 768, 768, 4)
    timer = RatedTimer(fp32=100, bf16={(768, 3072): 200, (768, 768): 50})
    probe = probe_precision([projection, mlp], timer=timer, cache_path=cache)
    assert probe.shapes == (mlp, projection)  # heaviest first
    assert probe.bf16_speedup == pytest.approx((12 / 100 + 1 / 100) / (12 / 200 + 1 / 50))
    assert probe.choice == "bf16"


def test_probe_times_only_the_three_heaviest_shapes_at_capped_rows(cache):
    shapes = [MatmulShape(3136, 96 * i, 384, 1) for i in range(1, 6)]
    timer = RatedTimer(fp32=100, bf16=100)
    probe_precision(shapes, timer=timer, cache_path=cache)
    timed = {shape for shape, _ in timer.calls}
    assert timed == {MatmulShape(PROBE_MAX_ROWS, 96 * i, 384, 1) for i in (3, 4, 5)}
    # a warm-up, then the repeats, each dtype in turn
    assert [dtype for shape, dtype in timer.calls[:4]] == [torch.float32, torch.bfloat16] * 2


def test_shapes_alike_up_to_the_row_cap_are_timed_once(cache):
    timer = RatedTimer(fp32=100, bf16=100)
    probe_precision([MatmulShape(3136, 768, 3072, 6), MatmulShape(1568, 768, 3072, 6)], timer=timer, cache_path=cache)
    assert {shape for shape, _ in timer.calls} == {MatmulShape(PROBE_MAX_ROWS, 768, 3072, 1)}
    assert len(timer.calls) == 2 * (1 + PROBE_MAX_PAIRS)  # one warm-up and a timing per pair and dtype


def test_timings_are_cached_and_reused(cache):
    first = probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    timer = RatedTimer(fp32=1, bf16=1000)  # would choose bf16 if it were asked
    again = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert timer.calls == []
    assert (again.cached, again.seconds, again.choice) == (True, 0.0, "fp32")
    assert again.bf16_speedup == first.bf16_speedup and not first.cached
    assert first.as_dict()["stored"] is True and first.not_stored is None
    assert list(own_section(cache)) == [f"{PROBE_MAX_ROWS}x768x3072@{torch.get_num_threads()}"]


@pytest.mark.parametrize("field", ["machine", "torch"])
def test_a_cache_from_another_machine_or_torch_version_is_measured_again(cache, monkeypatch, field):
    with monkeypatch.context() as elsewhere:
        act_as_another_node(elsewhere, field)
        probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    timer = RatedTimer(fp32=100, bf16=250)
    probe = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert timer.calls and not probe.cached and probe.choice == "bf16"


@pytest.mark.parametrize("field", ["machine", "torch"])
def test_nodes_sharing_a_cache_file_keep_each_others_timings(cache, monkeypatch, field):
    """Nodes of different CPU kinds (or torch versions) with one home folder: each probe adds its
    own entry, and neither wipes the other's."""
    probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    with monkeypatch.context() as elsewhere:
        act_as_another_node(elsewhere, field)
        assert probe_precision([XEON_MLP], timer=RatedTimer(fp32=100, bf16=250), cache_path=cache).choice == "bf16"
    timer = RatedTimer(fp32=1, bf16=1000)  # would choose bf16 if it were asked
    here = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert (here.cached, here.choice, timer.calls) == (True, "fp32", [])
    with monkeypatch.context() as elsewhere:
        act_as_another_node(elsewhere, field)
        there = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert (there.cached, there.choice, timer.calls) == (True, "bf16", [])
    assert len(json.loads(cache.read_text())["entries"]) == 2


def test_a_cache_is_kept_per_thread_count(cache):
    threads = torch.get_num_threads()
    probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    timer = RatedTimer(fp32=100, bf16=250)
    try:
        torch.set_num_threads(threads + 1)
        probe = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    finally:
        torch.set_num_threads(threads)
    assert timer.calls and probe.choice == "bf16" and probe.threads == threads + 1
    assert probe_precision([XEON_MLP], timer=timer, cache_path=cache).choice == "fp32"  # its own entry is kept


@pytest.mark.parametrize("text", ['{"entries": {"AMD EPYC; torch',
                                  '{"machine": "AMD EPYC", "torch": "2.1.0", "timings": {}}'],
                         ids=["cut short", "older layout"])
def test_a_cut_short_or_older_cache_file_is_measured_again(cache, text):
    cache.write_text(text)
    probe = probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    assert not probe.cached and probe.choice == "fp32"
    assert list(own_section(cache)) == [f"{PROBE_MAX_ROWS}x768x3072@{torch.get_num_threads()}"]


# ------------------------------------------------------------------------- a probe to be trusted


def test_each_shape_is_timed_in_pairs_that_alternate_which_dtype_goes_first(cache):
    timer = RatedTimer(fp32=100, bf16=100)
    probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    fp32, bf16 = torch.float32, torch.bfloat16
    assert [dtype for _, dtype in timer.calls] == [fp32, bf16] + [fp32, bf16, bf16, fp32] * 2 + [fp32, bf16]


def test_the_speedup_is_the_median_of_the_pairs_ratios(cache):
    """bf16 is 1.5x as fast, but the machine is 4x slower for the bf16 call of the second pair
    (calls 0-1 warm up, then pairs of two): that pair's ratio, 0.375, is outvoted."""
    timer = RatedTimer(fp32=100, bf16=150, load={4: 4.0})
    probe = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert timer.calls[4][1] == torch.bfloat16
    assert probe.bf16_speedup == pytest.approx(1.5) and probe.choice == "bf16"
    assert probe.fp32_gflops == pytest.approx((100.0,)) and probe.bf16_gflops == pytest.approx((150.0,))


def test_a_probe_whose_pairs_disagree_decides_this_run_but_is_measured_again_next_time(cache):
    probe = probe_precision([XEON_MLP], timer=RatedTimer(fp32=100, bf16=150, load={4: 4.0}), cache_path=cache)
    assert probe.spread == pytest.approx(4.0) and probe.spread > PROBE_MAX_SPREAD
    assert probe.not_stored == "its fp32/bf16 pairs disagreed (ratios 4.00x apart, more than 1.25x)"
    assert probe.as_dict()["stored"] is False and not cache.exists()
    timer = RatedTimer(fp32=100, bf16=150)
    again = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert timer.calls and not again.cached and again.not_stored is None


@pytest.mark.parametrize("readings", [[CORES + 0.5, 0.2], [0.2, CORES + 0.5]], ids=["before", "after"])
def test_a_probe_taken_while_the_machine_is_busy_is_not_cached(cache, load_average, readings):
    load_average[:] = readings
    probe = probe_precision([XEON_MLP], timer=RatedTimer(fp32=100, bf16=250), cache_path=cache)
    assert probe.choice == "bf16" and probe.load == tuple(readings)
    assert probe.not_stored == f"the machine was busy (load average {CORES + 0.5:.1f} on {CORES} cores)"
    assert not cache.exists()


def test_a_load_up_to_the_core_count_is_not_busy(cache, load_average):
    load_average[:] = [float(CORES)]
    assert probe_precision([XEON_MLP], timer=RatedTimer(fp32=100, bf16=250), cache_path=cache).not_stored is None
    assert cache.exists()


def test_spatiotemporal_reprobe_measures_again_and_keeps_the_new_probe(cache, monkeypatch):
    probe_precision([XEON_MLP], timer=RatedTimer(fp32=206, bf16=142), cache_path=cache)
    monkeypatch.setenv("SPATIOTEMPORAL_REPROBE", "1")
    timer = RatedTimer(fp32=100, bf16=250)
    probe = probe_precision([XEON_MLP], timer=timer, cache_path=cache)
    assert timer.calls and not probe.cached and probe.choice == "bf16"
    monkeypatch.delenv("SPATIOTEMPORAL_REPROBE")
    assert probe_precision([XEON_MLP], timer=RatedTimer(fp32=1, bf16=1), cache_path=cache).choice == "bf16"


def test_pairs_beyond_the_minimum_stop_at_the_deadline():
    order = []
    pairs = time_in_pairs(lambda: order.append("fp32") or 2.0, lambda: order.append("bf16") or 1.0,
                          min_pairs=3, max_pairs=5, deadline=0.0)  # long past
    assert pairs == [(2.0, 1.0)] * 3
    assert order == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SPATIOTEMPORAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert precision_cache_path() == tmp_path / "spatiotemporal" / "precision_probe.json"


def test_the_cache_shares_the_librarys_one_root_with_the_weights(monkeypatch, tmp_path):
    from spatiotemporal.weights import cache_root

    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path / "root"))
    assert precision_cache_path() == tmp_path / "root" / "precision_probe.json"
    assert precision_cache_path().parent == cache_root()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_runs_no_probe(cache, precision):
    timer = RatedTimer(fp32=100, bf16=100)
    choice = choose_precision(precision, CPU, [XEON_MLP], timer=timer, cache_path=cache)
    assert (choice.precision, choice.reason, choice.probe) == (precision, "asked for", None)
    assert timer.calls == [] and not cache.exists()


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        choose_precision("fp16", CPU)


def test_the_model_shapes_are_its_linear_layers_as_one_view_runs_them(tmp_path):
    """ViViT-tiny (joint): 8 frames in tubelets of 2 at 112 px in 16 px patches is 4 x 7 x 7 = 196
    tokens and a class token; 4 blocks of width 192 (qkv 3x, MLP 4x); a 6-class head on one token."""
    model = create_model("vivit_tiny", num_classes=6)
    shapes = model_matmul_shapes(model, (1, 3, 8, 112, 112), cache_path=tmp_path / "c.json")
    assert set(shapes) == {
        MatmulShape(197, 192, 576, 4), MatmulShape(197, 192, 192, 4), MatmulShape(197, 192, 768, 4),
        MatmulShape(197, 768, 192, 4), MatmulShape(1, 192, 6, 1),
    }
    assert all(p.device.type == "cpu" for p in model.parameters())  # traced on meta, the model untouched


def test_model_shapes_are_cached_per_architecture_and_input(tmp_path):
    cache = tmp_path / "c.json"
    eight = model_matmul_shapes(create_model("vivit_tiny"), (1, 3, 8, 112, 112), cache_path=cache)
    sixteen = model_matmul_shapes(create_model("vivit_tiny", num_frames=16), (1, 3, 16, 112, 112), cache_path=cache)
    assert MatmulShape(197, 192, 768, 4) in eight and MatmulShape(393, 192, 768, 4) in sixteen  # 8 x 49 + 1
    assert len(own_section(cache, "shapes")) == 2
    assert model_matmul_shapes(create_model("vivit_tiny"), (1, 3, 8, 112, 112), cache_path=cache) == eight


def test_the_real_probe_reports_rates_and_a_choice_that_follows_them(cache):
    probe = probe_precision([MatmulShape(256, 192, 768, 4)], cache_path=cache)
    assert probe.shapes == (MatmulShape(256, 192, 768, 4),) and not probe.cached
    assert probe.fp32_gflops[0] > 0 and probe.bf16_gflops[0] > 0 and 0 < probe.seconds < 10
    assert probe.bf16_speedup == pytest.approx(probe.bf16_gflops[0] / probe.fp32_gflops[0])
    assert probe.choice == ("bf16" if probe.bf16_speedup >= BF16_MARGIN else "fp32")
    assert probe.spread >= 1 and probe.cache_path == str(cache)
    # kept only where its pairs agreed (the load average here reads idle)
    assert (probe.not_stored is None) == (probe.spread <= PROBE_MAX_SPREAD) == cache.exists()
    if cache.exists():
        assert f"256x192x768@{torch.get_num_threads()}" in own_section(cache)


# ------------------------------------------------------------------------------------- infer --json


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("vivit_tiny", num_classes=6)
    path = tmp_path_factory.mktemp("ckpt") / "vivit.pt"
    torch.save({"model": model.state_dict(), "class_names": [f"motion {i}" for i in range(6)]}, path)
    return path


@pytest.mark.parametrize(("bf16_rate", "chosen"), [(250, "bf16"), (80, "fp32")])
def test_infer_json_shows_the_probe_and_the_precision_it_chose(monkeypatch, tmp_path, capsys, checkpoint,
                                                               bf16_rate, chosen):
    """The probe's timings for this machine are in the cache (as an earlier run leaves them), so
    `infer` reuses them: the choice follows them, and the JSON says what was measured."""
    from spatiotemporal.cli import main
    from spatiotemporal.infer import view_input_shape
    from tests.video_fixtures import h264_mp4

    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path / "cache"))
    model = create_model("vivit_tiny", num_classes=6)
    shapes = model_matmul_shapes(model, view_input_shape(model.spec))
    probe_precision(shapes, timer=RatedTimer(fp32=100, bf16=bf16_rate), cache_path=precision_cache_path())
    video = h264_mp4(tmp_path / "a.mp4")

    code = main(["infer", str(video), "--model", "vivit_tiny", "--checkpoint", str(checkpoint), "--views", "1x1",
                 "--device", "cpu", "--precision", "auto", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    document = json.loads(out.out)
    precision = document["precision"]
    assert (precision["requested"], precision["chosen"]) == ("auto", chosen)
    probe = precision["probe"]
    assert probe["cached"] is True and probe["choice"] == chosen
    assert probe["bf16_speedup"] == pytest.approx(bf16_rate / 100, abs=1e-3)
    assert probe["shapes"][0] == {"rows": 197, "in_features": 192, "out_features": 768, "calls": 4}  # MLP in
    assert probe["fp32_gflops"] == [100.0, 100.0, 100.0]
    assert probe["cache"] == str(precision_cache_path())
    assert [record["precision"] for record in document["results"]] == [chosen]


# ------------------------------------------------------------------------------------ benchmarks


def test_the_pipeline_benchmark_reports_the_precisions_its_actors_ran_in(tmp_path):
    """Not a probe of the driver's own (at another thread count): the results' precision column,
    written as a job's driver writes its shards."""
    from benchmarks.bench_pipeline import precisions_run
    from pipelines.job import OutputStore

    store = OutputStore(tmp_path)
    store.write("results", {"id": ["a", "b"], "path": ["a.mp4", "b.mp4"], "precision": ["fp32", "fp32"]})
    store.write("results", {"id": ["c"], "path": ["c.mp4"], "precision": ["bf16"]})
    assert precisions_run(tmp_path) == ["bf16", "fp32"]


@pytest.mark.parametrize(("model_speedup", "probe_choice", "agrees"),
                         [(1.05, "fp32", True), (1.05, "bf16", False), (1.2, "bf16", True), (0.9, "fp32", True)])
def test_the_precision_benchmark_judges_the_whole_model_by_the_probes_own_margin(model_speedup, probe_choice, agrees):
    from benchmarks.bench_precision import model_agrees

    assert model_agrees(model_speedup, probe_choice) is agrees


def test_the_precision_benchmark_times_the_whole_model_in_interleaved_pairs():
    """A warm-up of each, then pairs alternating which goes first, as the probe times its matmuls."""
    from benchmarks.bench_precision import whole_model_pairs

    order = []
    whole = whole_model_pairs(lambda: order.append("fp32"), lambda: order.append("bf16"), pairs=3)
    assert order == ["fp32", "bf16"] + ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert sorted(whole) == ["bf16_s", "fp32_s", "speedup", "spread"]
