"""`--precision auto` on this CPU: the probe's bf16 and fp32 matmul rates at each base video model's
own projection and MLP shapes, the choice it makes, what the probe costs (measured, then cached),
and whether the choice holds for the whole model: one clip's forward in fp32 and in bf16 autocast,
as `spatiotemporal infer` runs it (Linear/Conv weights stored in bf16 once), timed in interleaved
pairs as the probe times its matmuls and judged against the probe's own margin.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TITLE = "Precision probe: what `--precision auto` picks on this CPU, and whether the models agree"

MODELS = ("mvitv2_s", "swin3d_t", "timesformer_base", "vivit_b_joint")


def whole_model_pairs(forward_fp32, forward_bf16, pairs: int) -> dict:
    """One forward of each for warm-up, then `pairs` interleaved (fp32, bf16) pairs timed as the
    probe times its matmuls (`time_in_pairs`): the median seconds of each, and the pairs' median
    bf16 speed-up and spread."""
    import statistics

    from spatiotemporal.precision import pair_ratios, time_in_pairs

    def timed(forward):
        def run() -> float:
            start = time.perf_counter()
            forward()
            return time.perf_counter() - start
        return run

    forward_fp32()
    forward_bf16()
    timings = time_in_pairs(timed(forward_fp32), timed(forward_bf16), min_pairs=pairs)
    speedup, spread = pair_ratios(timings)
    return {"fp32_s": statistics.median(fp32 for fp32, _ in timings),
            "bf16_s": statistics.median(bf16 for _, bf16 in timings), "speedup": speedup, "spread": spread}


def model_agrees(model_speedup: float, probe_choice: str) -> bool:
    """Whether the probe chose what the whole model's own speed-up calls for, by the same margin."""
    from spatiotemporal.precision import precision_for_speedup

    return precision_for_speedup(model_speedup) == probe_choice


def _forward(model, clip, bf16: bool):
    """One forward in its own autocast region, as inference runs it."""
    import torch

    def forward():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(clip)

    return forward


def probe_row(name: str, cache: Path) -> dict:
    """The probe at model `name`'s shapes, measured into `cache` (empty: nothing reused), then read
    back from it: {'name', 'probe' (PrecisionProbe), 'cached_seconds', 'spec'}."""
    import torch

    from spatiotemporal.infer import view_input_shape
    from spatiotemporal.models import create_model
    from spatiotemporal.precision import choose_precision, model_matmul_shapes

    with torch.device("meta"):  # the shapes need no weights
        shapes_model = create_model(name)
    shapes = model_matmul_shapes(shapes_model, view_input_shape(shapes_model.spec), cache_path=cache)
    probe = choose_precision("auto", torch.device("cpu"), shapes, cache_path=cache).probe
    start = time.perf_counter()
    choose_precision("auto", torch.device("cpu"), lambda: model_matmul_shapes(shapes_model, view_input_shape(
        shapes_model.spec), cache_path=cache), cache_path=cache)
    return {"name": name, "probe": probe, "cached_seconds": time.perf_counter() - start,
            "spec": shapes_model.spec}


def run(args) -> str:
    import copy

    import torch

    from spatiotemporal.machine import matrix_units
    from spatiotemporal.models import create_model
    from spatiotemporal.precision import BF16_MARGIN, PROBE_MAX_ROWS, has_native_bf16, store_autocast_weights

    quick = getattr(args, "quick", False)
    models = MODELS[:1] if quick else MODELS
    pairs = 3  # the fewest a median of ratios needs
    load_before = os.getloadavg()[0]
    probe_lines = [
        "| model | shape (rows x in x out, calls) | fp32 GFLOP/s | bf16 GFLOP/s |",
        "|---|---|---|---|",
    ]
    model_lines = [
        "| model | probe: bf16 / fp32 | probe choice | probe s (measured / cached) "
        "| fp32 s/clip | bf16 s/clip | model: bf16 / fp32 (pairs' spread) | model agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            print(f"  {name}: probe", flush=True)
            row = probe_row(name, Path(folder) / f"{name}.json")
            probe, spec = row["probe"], row["spec"]
            for shape, fp32_rate, bf16_rate in zip(probe.shapes, probe.fp32_gflops, probe.bf16_gflops):
                probe_lines.append(f"| {name} | {shape.rows} x {shape.in_features} x {shape.out_features}, "
                                   f"{shape.calls} | {fp32_rate:.0f} | {bf16_rate:.0f} |")
            print(f"  {name}: whole model, fp32 and bf16", flush=True)
            torch.manual_seed(0)
            model = create_model(name).eval()
            clip = torch.randn(1, spec.in_channels, spec.num_frames, spec.crop_size, spec.crop_size)
            bf16_model = store_autocast_weights(copy.deepcopy(model), torch.bfloat16)
            whole = whole_model_pairs(_forward(model, clip, bf16=False), _forward(bf16_model, clip, bf16=True), pairs)
            del model, bf16_model
            cached = (f"{row['cached_seconds']:.3f}" if probe.not_stored is None
                      else f"not cached: {probe.not_stored}")
            model_lines.append(
                f"| {name} | {probe.bf16_speedup:.2f}x | {probe.choice} | {probe.seconds:.2f} / {cached} "
                f"| {whole['fp32_s']:.2f} | {whole['bf16_s']:.2f} | {whole['speedup']:.2f}x ({whole['spread']:.2f}x) "
                f"| {'yes' if model_agrees(whole['speedup'], probe.choice) else 'no'} |"
            )
    load_after = os.getloadavg()[0]
    return "\n".join([
        f"Matrix units: {matrix_units()}; flags say native bf16: {has_native_bf16(torch.device('cpu'))}; "
        f"{torch.get_num_threads()} threads. The probe times one Linear matmul per shape (the model's three "
        f"heaviest, at most {PROBE_MAX_ROWS} rows) in fp32 and in bf16 autocast, and picks bf16 only when the "
        f"model's matmul FLOPs at those rates run >= {BF16_MARGIN}x faster; it is measured into an empty cache, "
        "then run again from the cache (the cost every later `infer` pays, shape trace included); a probe taken "
        "on a busy machine or with scattered pairs is not cached, and says why. Whole model: one random-weight "
        f"clip at batch 1, a warm-up, then {pairs} interleaved fp32/bf16 pairs: median seconds, and the median of "
        "the pairs' ratios with their spread (largest over smallest). *Model agrees*: the whole forward's ratio "
        f"calls for the precision the probe chose, by the probe's own margin ({BF16_MARGIN}x).",
        "",
        *model_lines,
        "",
        *probe_lines,
        "",
        f"Load average (1 min) before/after: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores.",
    ])
