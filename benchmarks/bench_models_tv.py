"""MViTv2-S and Video Swin-T against torchvision's mvit_v2_s and swin3d_t: same weights, same clip,
same process. Clips/s and peak resident memory at batch 1 and 4, fp32 and bf16 autocast."""

from __future__ import annotations

import os
import time

from benchmarks.measure import PeakRss, forward_flops, gemm_rate, roofline_table

TITLE = "Models vs torchvision (MViTv2-S, Swin3D-T)"

FRAMES, SIZE = 16, 224  # torchvision's mvit_v2_s only accepts its 16x224 training size


def _measure(model, clip, bf16: bool, repeats: int):
    """(seconds per forward, peak MiB, logits) after one warm-up forward.

    Each forward opens its own autocast region, as inference calls do: autocast's cache of cast
    weights lasts one region, so a region around all the repeats would time a case no caller has.
    """
    import torch

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(clip)

    with torch.no_grad():
        forward()
        times = []
        with PeakRss() as memory:
            for _ in range(repeats):
                start = time.perf_counter()
                logits = forward()
                times.append(time.perf_counter() - start)
    return min(times), memory.mib, logits.float()


def _pairs():
    from torchvision.models.video import mvit_v2_s, swin3d_t

    return (("mvitv2_s", mvit_v2_s), ("swin3d_t", swin3d_t))


def run(args) -> str:
    import torch

    from spatiotemporal.convert import convert_state_dict
    from spatiotemporal.models import create_model
    from spatiotemporal.precision import has_native_bf16, store_autocast_weights

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    quick = getattr(args, "quick", False)
    batches = (1,) if quick else (1, 4)
    load_before = os.getloadavg()[0]
    rows, roofline, flops_per_clip = [], [], {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a pinned dependency
        tqdm = None
    jobs = [(name, ref_fn, b) for name, ref_fn in _pairs() for b in batches]
    progress = tqdm(total=len(jobs) * 3, desc="models_tv", unit="run") if tqdm else None
    for name, ref_fn, batch in jobs:
        torch.manual_seed(0)
        ref = ref_fn().eval()
        ours = create_model(name).eval()
        ours.load_state_dict(convert_state_dict(ref.state_dict(), ours.arch)[1])
        clip = torch.randn(batch, 3, FRAMES, SIZE, SIZE)
        fp32_repeats = 1 if quick else 2
        ref_s, ref_mib, ref_logits = _measure(ref, clip, bf16=False, repeats=fp32_repeats)
        progress and progress.update()
        our_s, our_mib, our_logits = _measure(ours, clip, bf16=False, repeats=fp32_repeats)
        progress and progress.update()
        if name not in flops_per_clip:  # the same at every batch size: counted once, on one clip
            flops_per_clip[name] = forward_flops(lambda: ref(clip[:1]))
        # bf16 runs once after warm-up: without native bf16 units it is the slowest configuration.
        # ... and as `VideoClassifier` runs it: matmul weights stored in bf16 once (bit-identical).
        bf_s, bf_mib, bf_logits = _measure(store_autocast_weights(ours, torch.bfloat16), clip, bf16=True, repeats=1)
        progress and progress.update()
        error = ((our_logits - ref_logits).norm() / ref_logits.norm()).item()
        same_top1 = (bf_logits.argmax(1) == our_logits.argmax(1)).float().mean().item()
        rows.append((name, batch, ref_s, ref_mib, our_s, our_mib, error, bf_s, bf_mib, same_top1))
        roofline.append((name, batch, flops_per_clip[name], ref_s / batch, our_s / batch, bf_s / batch))
        del ref, ours
    progress and progress.close()
    load_after = os.getloadavg()[0]

    lines = [
        f"Input {FRAMES}x{SIZE}x{SIZE} random clip, no grad, {torch.get_num_threads()} threads; "
        "random weights shared by reference and ours (torchvision state dict loaded through our converter). "
        "Times are the best of the repeats; memory is the peak resident-set growth during the timed runs. "
        "Ours bf16 is the inference path of `spatiotemporal infer`: one autocast region per forward, with the "
        "Linear/Conv weights stored in bf16 once (bit-identical to autocast casting them on every call).",
        "",
        "| model | batch | torchvision fp32 clips/s | ours fp32 clips/s | fp32 ratio (target >= 1.5) "
        "| ours bf16 clips/s | bf16 / torchvision fp32 (target >= 4) | bf16 top-1 = fp32 | "
        "peak MiB torchvision / ours fp32 / ours bf16 | logits rel. error vs torchvision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, ref_s, ref_mib, our_s, our_mib, error, bf_s, bf_mib, same_top1 in rows:
        ref_cps, our_cps, bf_cps = batch / ref_s, batch / our_s, batch / bf_s
        lines.append(
            f"| {name} | {batch} | {ref_cps:.3f} | {our_cps:.3f} | {our_cps / ref_cps:.2f}x | {bf_cps:.3f} "
            f"| {bf_cps / ref_cps:.2f}x | {same_top1:.0%} | {ref_mib:.0f} / {our_mib:.0f} / {bf_mib:.0f} | {error:.1e} |"
        )
    lines += ["", *roofline_table(roofline, "torchvision", gemm_rate(torch.float32), gemm_rate(torch.bfloat16))]
    capability = torch.backends.cpu.get_cpu_capability()
    lines += [
        "",
        f"CPU capability seen by torch: {capability}. Load average (1 min) before/after: "
        f"{load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores; the machine is shared, so "
        "absolute figures move with the load while the ratios (same process, interleaved) hold better.",
    ]
    if not has_native_bf16(torch.device("cpu")):
        lines.append(
            "This CPU has no AVX-512-BF16/AMX units, so bf16 autocast is emulated and slower than fp32; "
            "the bf16 target assumes AMX and cannot be met here."
        )
    return "\n".join(lines)
