"""Model facts computed without weights: parameter counts and FLOPs, on the meta device."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from spatiotemporal.models.registry import count_parameters, create_model, get_spec



def video_gflops_per_view(model: torch.nn.Module) -> float:
    """Multiply-adds per test view, in billions: the papers' "GFLOPs" convention (half of the
    FLOPs torch's counter reports, which counts a multiply-add as two).

    It counts what our implementation multiplies. That is the papers' count, except for MViTv2,
    whose relative positions ride in extra attention channels (faster than building the bias as a
    mask, but 4.7 G more for MViTv2-S, 68.9 against the paper's 64; 31 G more for MViTv2-B).
    """
    spec = model.spec
    clip = torch.empty(1, spec.in_channels, spec.num_frames, spec.crop_size, spec.crop_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(clip)
    return counter.get_total_flops() / 2 / 1e9


def describe_model(name: str, flops: bool = True) -> dict[str, Any]:
    spec = get_spec(name)
    with torch.device("meta"):
        model = create_model(name)
    gflops = None
    if flops and spec.family == "video" and spec.num_frames and spec.crop_size:
        try:
            gflops = video_gflops_per_view(model)
        except (NotImplementedError, RuntimeError):
            gflops = None  # an op without a meta kernel; the table shows '-'
    if spec.family == "video":
        input_spec = f"{spec.num_frames}x{spec.frame_stride} @{spec.crop_size}"
        views = f"{spec.protocol.temporal_views}x{spec.protocol.spatial_crops}"
    else:
        input_spec, views = "points", "-"
    return {
        "name": name,
        "family": spec.family,
        "params": count_parameters(model),
        "params_m": count_parameters(model) / 1e6,
        "published_params_m": spec.published_params_m,
        "params_source": spec.params_source,
        "input": input_spec,
        "num_frames": spec.num_frames,
        "frame_stride": spec.frame_stride,
        "crop_size": spec.crop_size,
        "gflops_per_view": gflops,
        "test_views": views,
        "aggregation": spec.protocol.aggregation,
        "mean": list(spec.preprocess.mean),
        "std": list(spec.preprocess.std),
        "description": spec.description,
    }
