"""What a model computes in: bf16 autocast or fp32.

`auto` on a GPU is bf16 where CUDA supports it. On a CPU, the flags say little: an Intel Xeon with
AVX512-BF16 but no AMX ran a 3136x768x3072 bf16 matmul at 142 GFLOP/s against fp32's 206, and
MViTv2-S slower in bf16 than fp32. So `auto` on a CPU times bf16 against fp32 at the model's own
projection and MLP shapes (`probe_precision`), once per machine and torch version, and keeps what
it measured in a small JSON file under the user cache dir (`precision_cache_path`), one entry per
machine and torch version so that nodes sharing a home folder keep each other's.

A probe is kept only when it can be trusted: fp32 and bf16 are timed in interleaved pairs, so load
that comes and goes hits both alike, and the choice follows the pairs' median bf16/fp32 ratio; a
probe whose pairs disagree, or one taken while the machine is busy, decides this run and is measured
again next time. SPATIOTEMPORAL_REPROBE=1 measures again whatever the cache holds.

Kept free of a torch import at module level so command-line parsers can offer the choices
without paying for torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")

# bf16 is chosen only when the probe finds it at least this much faster than fp32. The probe times
# matmuls alone; the rest of a forward (norms, softmax, the fp32 residual stream) gains nothing from
# bf16 and pays for casting activations into it, so a marginal matmul gain can be a whole-model
# loss. The margin also keeps a few percent of timing noise on a shared machine from flipping the
# choice from one run to the next.
BF16_MARGIN = 1.1

# The probe multiplies at most this many rows: enough for oneDNN to reach its steady per-FLOP rate
# (its blocking is far smaller), few enough that a probe's pairs fit in PROBE_BUDGET_S. A model's
# matmuls mostly have more rows (tokens x views); the rate is what is compared.
PROBE_MAX_ROWS = 1024
# The model's heaviest matmul shapes probed (a transformer's two MLP layers and its query-key-value
# projection).
PROBE_MAX_SHAPES = 3
# Per shape, fp32 and bf16 are timed back to back in pairs: PROBE_MIN_PAIRS always (a median needs
# three), more up to PROBE_MAX_PAIRS while the probe has spent less than PROBE_BUDGET_S, so that a
# busy machine makes the probe noisier rather than much longer.
PROBE_MIN_PAIRS = 3
PROBE_MAX_PAIRS = 5
PROBE_BUDGET_S = 1.0
# One timed sample repeats the matmul until it has run this long: a single call of a small model's
# matmul (a fraction of a millisecond) is at the mercy of a thread's wake-up.
PROBE_MIN_SAMPLE_S = 0.002
# A probe is cached only when, for every shape, its largest pair ratio is at most this many times
# its smallest. Pairs timed back to back see the same machine, so on a quiet one they should agree
# closely; under load they scatter (at a load average of 13-17 on 2 cores, 19x to 6000x apart, and
# ViViT-tiny's probe chose bf16 at 1.33x one run and fp32 at 0.88x the next).
PROBE_MAX_SPREAD = 1.25
# Set to 1 to measure again whatever the cache holds (and store the new probe if it can be trusted).
REPROBE_ENV = "SPATIOTEMPORAL_REPROBE"


@dataclass(frozen=True)
class MatmulShape:
    """A Linear layer's matmul in a model's forward: (rows, in_features) @ (in_features, out_features),
    run `calls` times per forward (e.g. once per block)."""

    rows: int
    in_features: int
    out_features: int
    calls: int = 1

    @property
    def flops(self) -> int:
        """FLOPs of all its calls in one forward (a multiply-add counts 2)."""
        return 2 * self.rows * self.in_features * self.out_features * self.calls

    @property
    def probed(self) -> "MatmulShape":
        """The shape the probe times: at most PROBE_MAX_ROWS rows, one call."""
        return MatmulShape(min(self.rows, PROBE_MAX_ROWS), self.in_features, self.out_features)

    @property
    def key(self) -> str:
        return f"{self.rows}x{self.in_features}x{self.out_features}"


# The base video transformers' query-key-value projection and first MLP layer (ViT-B: 8x14x14
# tokens, width 768): what `auto` probes when no model is at hand.
BASE_TRANSFORMER_SHAPES = (MatmulShape(1568, 768, 2304, 12), MatmulShape(1568, 768, 3072, 12))


@dataclass(frozen=True)
class PrecisionProbe:
    """What the probe measured: per shape (the model's, rows as the model runs them) the fp32 GFLOP/s
    and bf16's (fp32's times the pairs' median bf16/fp32 ratio), the bf16 speed-up over the model's
    matmul FLOPs, the choice it makes, and whether what was measured went into the cache."""

    shapes: tuple[MatmulShape, ...]
    fp32_gflops: tuple[float, ...]
    bf16_gflops: tuple[float, ...]
    bf16_speedup: float
    choice: str  # "bf16" or "fp32"
    cached: bool  # every timing came from the cache: nothing was measured this time
    seconds: float  # wall time spent measuring (0 when cached)
    threads: int
    cache_path: str = ""
    spread: float | None = None  # the largest pair-ratio spread of the shapes measured this time
    load: tuple[float, float] | None = None  # 1-minute load average before and after measuring
    not_stored: str | None = None  # why what was measured this time was not cached (None: it was)

    def as_dict(self) -> dict:
        return {
            "shapes": [asdict(shape) for shape in self.shapes],
            "rows_probed": [shape.probed.rows for shape in self.shapes],
            "fp32_gflops": [round(rate, 1) for rate in self.fp32_gflops],
            "bf16_gflops": [round(rate, 1) for rate in self.bf16_gflops],
            "bf16_speedup": round(self.bf16_speedup, 3),
            "margin": BF16_MARGIN,
            "choice": self.choice,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "threads": self.threads,
            "spread": None if self.spread is None else round(self.spread, 3),
            "load": None if self.load is None else [round(value, 2) for value in self.load],
            "stored": not self.cached and self.not_stored is None,
            "not_stored": self.not_stored,
            "cache": self.cache_path,
        }


@dataclass(frozen=True)
class PrecisionChoice:
    """The compute precision a caller asked for, what it became, and why."""

    requested: str  # "auto", "fp32" or "bf16"
    precision: str  # "bf16" (autocast) or "fp32"
    reason: str
    probe: PrecisionProbe | None = None

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def as_dict(self) -> dict:
        return {"requested": self.requested, "chosen": self.precision, "reason": self.reason,
                "probe": self.probe.as_dict() if self.probe is not None else None}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run on bf16 units here: AMX or AVX512-BF16 on a CPU, a bf16-capable GPU.

    Without them oneDNN emulates bf16 and it is slower than fp32. With them it may still be slower
    (AVX512-BF16 without AMX on some Xeons), so `auto` on a CPU decides by `probe_precision`.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def choose_precision(
    precision: str,
    device: torch.device,
    shapes: Sequence[MatmulShape] | Callable[[], Sequence[MatmulShape]] | None = None,
    *,
    timer: Callable[[MatmulShape, torch.dtype], float] | None = None,
    cache_path: str | os.PathLike | None = None,
) -> PrecisionChoice:
    """The compute precision for `precision` on `device`. 'auto': on CUDA, bf16 where the GPU
    supports it; on a CPU, the probe's choice at `shapes` (the model's matmuls, see
    `model_matmul_shapes`, or a function that returns them, called only when `auto` decides on a
    CPU; the base video transformers' when None or empty); fp32 elsewhere."""
    check_precision(precision)
    if precision != "auto":
        return PrecisionChoice(precision, precision, "asked for")
    if device.type == "cuda":
        import torch

        supported = torch.cuda.is_bf16_supported()
        return PrecisionChoice("auto", "bf16" if supported else "fp32",
                               "the GPU supports bf16" if supported else "the GPU does not support bf16")
    if device.type != "cpu":
        return PrecisionChoice("auto", "fp32", f"no bf16 probe for {device.type} devices")
    if callable(shapes):
        shapes = shapes()
    whose = "the model's" if shapes else "the base video transformers'"
    probe = probe_precision(shapes or BASE_TRANSFORMER_SHAPES, timer=timer, cache_path=cache_path)
    relation = "faster" if probe.bf16_speedup >= 1 else "slower"
    factor = probe.bf16_speedup if probe.bf16_speedup >= 1 else 1 / probe.bf16_speedup
    return PrecisionChoice("auto", probe.choice,
                           f"bf16 matmuls ran {factor:.2f}x {relation} than fp32 at {whose} shapes "
                           f"(bf16 needs >= {BF16_MARGIN}x)", probe)


# ------------------------------------------------------------------------------------- the probe


def probe_precision(
    shapes: Sequence[MatmulShape],
    *,
    timer: Callable[[MatmulShape, torch.dtype], float] | None = None,
    cache_path: str | os.PathLike | None = None,
) -> PrecisionProbe:
    """Time bf16 autocast against fp32 on this CPU at the heaviest of `shapes`, and choose.

    `timer(shape, dtype)` gives the seconds of one matmul of that shape (default `MatmulTimer`).
    Each shape is timed in interleaved fp32/bf16 pairs (`time_in_pairs`) and its bf16 speed-up is
    the pairs' median ratio. The choice is bf16 when the model's matmul FLOPs at the measured rates
    take at least BF16_MARGIN times longer in fp32.

    Timings are cached per shape and thread count in `cache_path` (default `precision_cache_path()`),
    under this machine's identity (CPU model and flags) and torch version; other machines' entries
    in the same file are kept. What was measured is cached only when it can be trusted: every
    shape's pairs agree within PROBE_MAX_SPREAD, and the 1-minute load average was at most the core
    count before and after. SPATIOTEMPORAL_REPROBE=1 ignores the cached timings.
    """
    import torch

    if not shapes:
        raise ValueError("the precision probe needs at least one matmul shape")
    timer = timer or MatmulTimer()
    path = Path(cache_path) if cache_path is not None else precision_cache_path()
    threads = torch.get_num_threads()
    heaviest = sorted(shapes, key=lambda shape: shape.flops, reverse=True)[:PROBE_MAX_SHAPES]
    identity = _cache_identity()
    timings = {} if reprobe_requested() else _read_cache(path, identity, "timings")
    # Shapes that differ only in rows beyond PROBE_MAX_ROWS are one probe.
    missing = {_cache_key(shape.probed, threads): shape.probed for shape in heaviest
               if not _is_timing(timings.get(_cache_key(shape.probed, threads)))}
    spread = load = not_stored = None
    seconds = 0.0
    if missing:
        load_before = _load_average()
        start = time.perf_counter()
        for key, probed in missing.items():
            timings[key] = _measure(probed, timer, deadline=start + PROBE_BUDGET_S)
        seconds = time.perf_counter() - start
        load_after = _load_average()
        spread = max(timings[key]["spread"] for key in missing)
        cores = os.cpu_count() or 1
        if load_before is not None and load_after is not None:
            load = (load_before, load_after)
        if load is not None and max(load) > cores:
            not_stored = f"the machine was busy (load average {max(load):.1f} on {cores} cores)"
        elif spread > PROBE_MAX_SPREAD:
            not_stored = (f"its fp32/bf16 pairs disagreed (ratios {spread:.2f}x apart, "
                          f"more than {PROBE_MAX_SPREAD}x)")
        else:
            _update_cache(path, identity, "timings", {key: timings[key] for key in missing})
    fp32_rates, bf16_rates = [], []
    for shape in heaviest:
        measured = timings[_cache_key(shape.probed, threads)]
        fp32_rates.append(shape.probed.flops / measured["fp32_s"])
        bf16_rates.append(fp32_rates[-1] * measured["bf16_speedup"])
    fp32_seconds = sum(shape.flops / rate for shape, rate in zip(heaviest, fp32_rates))
    bf16_seconds = sum(shape.flops / rate for shape, rate in zip(heaviest, bf16_rates))
    speedup = fp32_seconds / bf16_seconds
    return PrecisionProbe(
        shapes=tuple(heaviest), fp32_gflops=tuple(r / 1e9 for r in fp32_rates),
        bf16_gflops=tuple(r / 1e9 for r in bf16_rates), bf16_speedup=speedup,
        choice=precision_for_speedup(speedup), cached=not missing, seconds=seconds, threads=threads,
        cache_path=str(path), spread=spread, load=load, not_stored=not_stored,
    )


def precision_for_speedup(bf16_speedup: float) -> str:
    """"bf16" where bf16 runs at least BF16_MARGIN times as fast as fp32, else "fp32"."""
    return "bf16" if bf16_speedup >= BF16_MARGIN else "fp32"


def reprobe_requested() -> bool:
    """Whether SPATIOTEMPORAL_REPROBE asks to measure again whatever the cache holds."""
    return os.environ.get(REPROBE_ENV, "").strip() not in ("", "0")


def _load_average() -> float | None:
    """The 1-minute load average, None where the system has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _is_timing(entry) -> bool:
    """Whether a cache entry is a usable timing (a file edited or written by another version may not be)."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(k), (int, float)) and entry[k] > 0 for k in ("fp32_s", "bf16_s", "bf16_speedup"))


def time_in_pairs(time_fp32: Callable[[], float], time_bf16: Callable[[], float], *, min_pairs: int,
                  max_pairs: int | None = None, deadline: float | None = None) -> list[tuple[float, float]]:
    """(fp32 s, bf16 s) of pairs timed back to back: `min_pairs`, then more up to `max_pairs` while
    the perf_counter clock is before `deadline`. Each callable runs once and returns its seconds.

    Within a pair the two see the same load, so their ratio holds where the times themselves do
    not; the order alternates from one pair to the next (fp32 first, then bf16 first) so that a
    load that rises or falls steadily favours neither."""
    pairs = []
    for index in range(max(min_pairs, max_pairs or 0)):
        if index >= min_pairs and (deadline is None or time.perf_counter() > deadline):
            break
        if index % 2 == 0:
            fp32 = time_fp32()
            bf16 = time_bf16()
        else:
            bf16 = time_bf16()
            fp32 = time_fp32()
        pairs.append((fp32, bf16))
    return pairs


def pair_ratios(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(median, spread) of the pairs' fp32/bf16 time ratios (bf16's speed-up): the spread is the
    largest ratio over the smallest, 1 where the pairs agree exactly."""
    ratios = sorted(fp32 / bf16 for fp32, bf16 in pairs)
    return statistics.median(ratios), ratios[-1] / ratios[0]


def _measure(shape: MatmulShape, timer: Callable[[MatmulShape, torch.dtype], float], deadline: float) -> dict:
    """One shape's median fp32 time, its bf16 speed-up (the pairs' median ratio) and the pairs'
    spread, after a warm-up in each dtype."""
    import torch

    for dtype in (torch.float32, torch.bfloat16):
        timer(shape, dtype)  # warm-up: oneDNN picks and caches its kernel on the first call
    pairs = time_in_pairs(lambda: timer(shape, torch.float32), lambda: timer(shape, torch.bfloat16),
                          min_pairs=PROBE_MIN_PAIRS, max_pairs=PROBE_MAX_PAIRS, deadline=deadline)
    speedup, spread = pair_ratios(pairs)
    return {"fp32_s": statistics.median(fp32 for fp32, _ in pairs),
            "bf16_s": statistics.median(bf16 for _, bf16 in pairs),
            "bf16_speedup": speedup, "spread": spread, "pairs": len(pairs)}


class MatmulTimer:
    """Seconds of one Linear matmul of a shape as inference runs it in a dtype: fp32, or bf16
    autocast with the weight stored in bf16 (`store_autocast_weights`) and an fp32 input.

    Holds the operands of the shape it timed last, so repeated calls time the matmul alone. One
    call repeats the matmul until PROBE_MIN_SAMPLE_S has passed and gives the mean."""

    def __init__(self):
        self._shape: MatmulShape | None = None
        self._operands: tuple = ()

    def __call__(self, shape: MatmulShape, dtype: torch.dtype) -> float:
        import torch
        import torch.nn.functional as F

        if shape != self._shape:
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(shape.rows, shape.in_features, generator=generator)
            weight = torch.randn(shape.out_features, shape.in_features, generator=generator)
            self._shape, self._operands = shape, (x, {torch.float32: weight, torch.bfloat16: weight.to(torch.bfloat16)})
        x, weights = self._operands
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            start = time.perf_counter()
            calls = 0
            while True:
                F.linear(x, weights[dtype])
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= PROBE_MIN_SAMPLE_S:
                    return elapsed / calls


def _cache_key(shape: MatmulShape, threads: int) -> str:
    return f"{shape.key}@{threads}"


def precision_cache_path() -> Path:
    """precision_probe.json under the library's cache root (`SPATIOTEMPORAL_CACHE`, else the user
    cache dir: ~/.cache/spatiotemporal, $XDG_CACHE_HOME/spatiotemporal when that is set)."""
    from spatiotemporal.cache import cache_root

    return cache_root() / "precision_probe.json"


def machine_identity() -> str:
    """The CPU model name and a digest of its feature flags: a timing holds only on the same kind
    of CPU with the same instructions (a VM can hide AMX from the same model)."""
    from spatiotemporal.machine import cpu_flags, cpu_name

    return f"{cpu_name()}; flags {hashlib.sha256(cpu_flags().encode()).hexdigest()[:16]}"


def _cache_identity() -> dict:
    import torch

    return {"machine": machine_identity(), "torch": torch.__version__}


def _identity_key(identity: dict) -> str:
    return f"{identity['machine']}; torch {identity['torch']}"


def _read_document(path: Path) -> dict:
    """The cache file's entries, one per machine and torch version ({} if there is no usable file:
    none yet, one cut short, or one in an older layout)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {key: entry for key, entry in entries.items() if isinstance(entry, dict)}


def _read_cache(path: Path, identity: dict, section: str) -> dict:
    """A section ("timings" or "shapes") of this machine's and this torch's entry in the cache,
    empty when there is none: what another machine or torch version measured does not hold here."""
    return _section(_read_document(path).get(_identity_key(identity), {}), identity, section)


def _section(entry: dict, identity: dict, section: str) -> dict:
    if any(entry.get(k) != v for k, v in identity.items()):
        return {}
    entries = entry.get(section)
    return dict(entries) if isinstance(entries, dict) else {}


def _update_cache(path: Path, identity: dict, section: str, entries: dict) -> None:
    """Add `entries` to a section of this machine's entry in the cache. The file is read again just
    before and written whole to a temporary file that is then renamed, so processes probing at once
    (a batch job's actors, nodes of other CPU kinds sharing a home folder) keep each other's entries
    as far as they can and never read half a file. A cache that cannot be written costs a probe next
    time, no more."""
    document = _read_document(path)
    key = _identity_key(identity)
    document[key] = {**identity, **{name: _section(document.get(key, {}), identity, name)
                                    for name in ("timings", "shapes")}}
    document[key][section].update(entries)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"entries": document}, indent=1))
        os.replace(temporary, path)
    except OSError:
        pass


# ------------------------------------------------------------------------------ a model's shapes


def model_matmul_shapes(model: nn.Module, input_shape: Sequence[int],
                        cache_path: str | os.PathLike | None = None) -> tuple[MatmulShape, ...]:
    """The Linear matmuls one forward of `model` on an input of `input_shape` runs, with how often.

    Traced on the meta device (shapes only: nothing is computed and the weights are untouched), and
    kept in the probe's cache under a digest of the architecture (`repr(model)`, which shows every
    layer's sizes and strides) and the input shape: a start-up cost `infer` should pay once. The
    trace is Python dispatch alone: 0.05-0.3 s of CPU time (ViViT-tiny to MViTv2-S, torch already
    imported, one thread, AMD EPYC), but on a busy machine its wall time is several times that
    (MViTv2-S: 1.7-2.9 s at a load average of 23-28 on 2 cores). Where the forward cannot run on
    meta, every Linear layer once at PROBE_MAX_ROWS rows.
    """
    import torch
    from torch import nn
    from torch.func import functional_call

    path = Path(cache_path) if cache_path is not None else precision_cache_path()
    identity = _cache_identity()
    signature = hashlib.sha256(f"{repr(model)}\n{tuple(input_shape)}".encode()).hexdigest()[:32]
    cached = _read_cache(path, identity, "shapes").get(signature)
    if isinstance(cached, list):
        return tuple(MatmulShape(*entry) for entry in cached)
    counts: dict[tuple[int, int, int], int] = {}

    def record(module: nn.Linear, args) -> None:
        key = (args[0].numel() // module.in_features, module.in_features, module.out_features)
        counts[key] = counts.get(key, 0) + 1

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hooks = [linear.register_forward_pre_hook(record) for linear in linears]
    tensors = {name: torch.empty_like(t, device="meta")
               for name, t in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    try:
        with torch.no_grad():
            functional_call(model, tensors, (torch.empty(*input_shape, device="meta"),))
    except (NotImplementedError, RuntimeError, TypeError):
        # An op without a meta kernel, or a tensor the model keeps outside its buffers.
        counts = {}
        for linear in linears:
            key = (PROBE_MAX_ROWS, linear.in_features, linear.out_features)
            counts[key] = counts.get(key, 0) + 1
    finally:
        for hook in hooks:
            hook.remove()
    shapes = tuple(MatmulShape(rows, k, n, calls) for (rows, k, n), calls in counts.items())
    _update_cache(path, identity, "shapes", {signature: [list(astuple(shape)) for shape in shapes]})
    return shapes


def store_autocast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store, once, the weights that autocast casts to `dtype` on every call: those of Linear and
    Conv layers. For inference under `torch.autocast(dtype=dtype)` only.

    Autocast keeps such casts only until its region closes, so a model called once per batch pays
    them on every call (measured on a 2-core AMX CPU, batch 1: 9% of a TimeSformer-B bf16 forward,
    5% of MViTv2-S and ViViT-B, 1% of Swin3D-T).
    The tensors cast are exactly those autocast would cast, to the same dtype, so the outputs are
    bit-identical. Norms, embeddings and other parameters stay as they are.
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model
