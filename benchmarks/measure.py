"""What the benchmark sections measure alike: peak memory while a case runs, and how close a
forward comes to this CPU's matrix-multiply speed (the roofline a speed-up target is bounded by)."""

from __future__ import annotations

import threading
import time

# Token-by-channel shapes of the base video transformers' projections and MLPs (1568 tokens = 8x14x14
# patches, width 768): the GEMMs that take most of their time.
TRANSFORMER_GEMMS = ((1568, 768, 2304), (1568, 768, 3072), (1568, 3072, 768), (3136, 768, 768))


class PeakRss:
    """This process's peak resident-set growth over its level at entry, sampled every few ms.

    `peak` is in bytes. Weights loaded before entry are not counted; activations and workspaces are.
    """

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0

    def __enter__(self):
        self._start = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _growth(self) -> int:
        return self._process.memory_info().rss - self._start

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._growth())
            time.sleep(self._interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._growth())

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def forward_flops(forward) -> int:
    """Floating-point operations of one call of `forward()` (a multiply-add counts 2): matmuls,
    convolutions and attention, as torch's FLOP counter sees them. Count them on the reference: its
    FLOPs are the architecture's (ours may compute more to move less; MViTv2's relative positions).

    torch counts the fused GPU attention kernels but not the CPU one, which every SDPA call here
    dispatches to; it is added with the same formula, so attention is counted wherever it runs.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops},
    )
    with torch.no_grad(), counter:
        forward()
    return counter.get_total_flops()


def gemm_rate(dtype, shapes=TRANSFORMER_GEMMS, repeats: int = 5) -> float:
    """The fastest matrix multiply this process runs, in FLOP/s: the best over `shapes` (m, k, n)
    of (m, k) @ (k, n) in `dtype`, each the best of `repeats` after a warm-up, on torch's threads.

    A forward made of the same FLOPs cannot run faster than its FLOPs at this rate, whatever the
    implementation, so `gemm_rate / reference rate` bounds the speed-up any implementation can reach.
    """
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        seconds = min(_timed(lambda: a @ b) for _ in range(repeats))
        best = max(best, 2 * m * k * n / seconds)
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def roofline_table(rows, reference: str, fp32_rate: float, bf16_rate: float) -> list[str]:
    """Markdown lines: per (model, batch, FLOPs per clip, seconds per clip for the reference fp32,
    ours fp32 and ours bf16 or None where not measured), the FLOP rate each reached and the ceilings
    this CPU's GEMM rates put on the issue's ratios."""
    lines = [
        f"Roofline: this CPU's fastest fp32 matrix multiply ran at {fp32_rate / 1e9:.0f} GFLOP/s and "
        f"bf16 at {bf16_rate / 1e9:.0f} GFLOP/s (best of the base models' projection and MLP shapes, "
        "same threads). A ceiling is that rate over the reference's fp32 rate: the ratio an implementation "
        "of the same FLOPs would reach if every FLOP ran at matrix-multiply speed (norms, softmax and "
        "copies free).",
        "",
        f"| model | batch | GFLOP/clip | {reference} fp32 GFLOP/s | ours fp32 GFLOP/s | ours bf16 GFLOP/s "
        "| fp32 ceiling (target >= 1.5) | bf16 ceiling (target >= 4) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, batch, flops, ref_s, fp32_s, bf16_s in rows:
        ref_rate = flops / ref_s
        bf16_cell = f"{flops / bf16_s / 1e9:.0f}" if bf16_s else "-"
        lines.append(
            f"| {model} | {batch} | {flops / 1e9:.1f} | {ref_rate / 1e9:.0f} | {flops / fp32_s / 1e9:.0f} "
            f"| {bf16_cell} | {fp32_rate / ref_rate:.2f}x | {bf16_rate / ref_rate:.2f}x |"
        )
    return lines
