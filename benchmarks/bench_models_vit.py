"""TimeSformer and ViViT against HF transformers' implementations: the same random weights (HF's
state dict loaded through our converter), the same clip, in the same process, without gradients.
Reports clips/s and peak memory for batch 1 and 4, fp32 and bf16 autocast, the ratios to the
reference's fp32 speed, and whether bf16 keeps fp32's top-1 on the benchmark clips.

Peak memory is the largest resident-set growth seen by a 5 ms sampler during the timed calls, above
the resident set just before them (weights excluded, activations and workspaces included).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import nullcontext

from benchmarks.measure import PeakRss, forward_flops, gemm_rate, roofline_table

TITLE = "Video transformers (ViT-style): TimeSformer and ViViT vs HF transformers"


def _measure_interleaved(cases, repeats: int):
    """{case: (median seconds per call, peak memory growth, last output)}.

    Every case is warmed up once, then the cases are timed in turn, round after round, so that on a
    shared machine each sees the same load and the ratios stay meaningful. `cases` maps a name to
    (callable, context factory, number of rounds it takes part in).
    """
    import gc

    import torch

    outputs, times, peaks = {}, {name: [] for name in cases}, {name: 0 for name in cases}
    for name, (fn, context, _) in cases.items():
        with torch.inference_mode(), context():
            outputs[name] = fn()
    for round_index in range(repeats):
        for name, (fn, context, rounds) in cases.items():
            if round_index >= rounds:
                continue
            gc.collect()
            with torch.inference_mode(), context(), PeakRss() as memory:
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], memory.peak)
            print(f"    {name}: {times[name][-1]:.2f} s", flush=True)
    return {name: (statistics.median(times[name]), peaks[name], outputs[name]) for name in cases}


def _pair(kind: str):
    """(reference HF model, our model with the reference's weights, frames) for the paper config."""
    import torch

    from spatiotemporal.convert import convert_state_dict
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    if kind == "timesformer":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        reference = TimesformerForVideoClassification(TimesformerConfig(num_labels=400))
        name = "timesformer_base"
    else:
        from transformers import VivitConfig, VivitForVideoClassification

        reference = VivitForVideoClassification(VivitConfig(num_labels=400))
        name = "vivit_b_joint"
    reference.eval()
    with torch.device("meta"):
        ours = create_model(name)
    _, state = convert_state_dict(reference.state_dict(), ours.arch)
    ours.load_state_dict(state, assign=True)  # the meta model takes the converted tensors as they are
    return reference, ours.eval(), ours.spec.num_frames


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def run(args) -> str:
    import copy

    import torch

    from spatiotemporal.precision import has_native_bf16, store_autocast_weights

    quick = getattr(args, "quick", False)
    batches = {1: 1} if quick else {1: 2, 4: 1}  # batch -> timed repeats after one warm-up
    # Without AVX512-BF16/AMX, oneDNN emulates bf16 matmuls and autocast is several times slower than
    # fp32; measure it once at batch 1 to show by how much instead of spending minutes per cell.
    native_bf16 = has_native_bf16(torch.device("cpu"))
    lines = [
        f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; native bf16 matmul: {native_bf16}; "
        f"torch threads: {torch.get_num_threads()}; load average before: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + "; inputs 224x224, random weights (HF init); one warm-up call each, then the median of "
        + ", ".join(f"{n} call(s) at batch {b}" for b, n in batches.items())
        + ", the implementations timed in turn (round-robin) so they share the machine's load.",
        "",
        _row(["model", "batch", "implementation", "s/clip", "clips/s", "peak MiB", "vs ref fp32",
              "top-1 = fp32"]),
        _row(["---"] * 8),
    ]
    roofline = []
    for kind in ("timesformer", "vivit"):
        reference, ours, frames = _pair(kind)
        # bf16 as `spatiotemporal infer` runs it: Linear/Conv weights stored in bf16 once (autocast
        # would cast exactly those on every call; the outputs are bit-identical).
        ours_bf16 = store_autocast_weights(copy.deepcopy(ours), torch.bfloat16)
        label = "TimeSformer 8x224 (divided)" if kind == "timesformer" else "ViViT-B/16x2 32x224 (Model 1)"
        # The same at every batch size, so counted once, on one clip.
        flops_per_clip = forward_flops(lambda: reference(pixel_values=torch.zeros(1, frames, 3, 224, 224)))
        for batch, repeats in batches.items():
            clip = torch.randn(batch, 3, frames, 224, 224, generator=torch.Generator().manual_seed(batch))
            hf_clip = clip.transpose(1, 2).contiguous()  # HF takes (B, T, C, H, W)
            bf16_rounds = repeats if native_bf16 else 1
            cases = {
                "HF transformers fp32": (lambda: reference(pixel_values=hf_clip).logits, nullcontext, repeats),
                "ours fp32": (lambda: ours(clip), nullcontext, repeats),
            }
            if native_bf16 or batch == 1:
                cases["ours bf16 autocast"] = (
                    lambda: ours_bf16(clip), lambda: torch.autocast("cpu", dtype=torch.bfloat16), bf16_rounds
                )
            print(f"  {label}, batch {batch}", flush=True)
            results = {name: (sec, peak, out.float()) for name, (sec, peak, out)
                       in _measure_interleaved(cases, repeats).items()}
            ref_seconds = results["HF transformers fp32"][0]
            ours_top1 = results["ours fp32"][2].argmax(1)
            reference_logits = results["HF transformers fp32"][2]
            parity = (results["ours fp32"][2] - reference_logits).norm() / reference_logits.norm()
            for case, (seconds, peak, logits) in results.items():
                same = f"{int((logits.argmax(1) == ours_top1).sum())}/{batch}" if "bf16" in case else "-"
                lines.append(_row([
                    label, batch, case, f"{seconds / batch:.3f}", f"{batch / seconds:.3f}",
                    f"{peak / 2**20:.0f}", f"{ref_seconds / seconds:.2f}x", same,
                ]))
            lines.append(_row([label, batch, f"ours fp32 vs HF: relative error {parity:.1e}", "", "", "", "", ""]))
            bf16_seconds = results["ours bf16 autocast"][0] / batch if "ours bf16 autocast" in results else None
            roofline.append((label, batch, flops_per_clip, ref_seconds / batch, results["ours fp32"][0] / batch, bf16_seconds))
        del reference, ours, ours_bf16
    lines += ["", *roofline_table(roofline, "HF", gemm_rate(torch.float32), gemm_rate(torch.bfloat16))]
    lines += [
        "",
        "Load average after: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + ".",
        "",
        "Issue targets: fp32 >= 1.5x the reference's clips/s; bf16 autocast >= 4x the reference's fp32 "
        "with fp32's top-1. Whether a target can be met on this CPU at all is the roofline's ceiling: bf16 "
        "matmuls run several times fp32's rate with AMX, about twice with AVX512-BF16 alone, and without either "
        "(see the first line) bf16 is emulated and slower than fp32, and only batch 1 is measured. Ours bf16 is the inference "
        "path of `spatiotemporal infer`: one autocast region per call, with the Linear/Conv weights stored in "
        "bf16 once (bit-identical to autocast casting them on every call).",
    ]
    return "\n".join(lines)
