"""TimeSformer: configurations, parameter counts, attention variants, and the training/inference modes."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spatiotemporal.layers.space_time_attention import Block, DividedSpaceTimeBlock
from spatiotemporal.models import count_parameters, create_model, get_spec, list_models


class AtenOps(TorchDispatchMode):
    """Counts the aten operators a forward pass actually runs."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


# Tests run the tiny configs at 4 frames of 64 px: every code path, a fraction of the time.
SMALL = {"num_frames": 4, "image_size": 64}
# Training-mode checks: the smallest clip that still has several frames and patches.
MINI = {"num_frames": 4, "image_size": 32}


def _clip(batch: int = 2, frames: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_timesformer_base_has_the_published_121_4m_parameters_with_a_400_class_head():
    with torch.device("meta"):
        model = create_model("timesformer_base")
    spec = get_spec("timesformer_base")
    assert spec.published_params_m == 121.4 and spec.params_source
    assert abs(count_parameters(model) / 1e6 - 121.4) / 121.4 < 0.005


def test_registered_configs_carry_the_papers_inputs_protocol_and_preprocessing():
    expected = {"timesformer_base": (8, 32, 224), "timesformer_hr": (16, 16, 448), "timesformer_large": (96, 4, 224)}
    for name, (frames, stride, size) in expected.items():
        spec = get_spec(name)
        assert (spec.num_frames, spec.frame_stride, spec.crop_size) == (frames, stride, size)
        assert (spec.protocol.temporal_views, spec.protocol.spatial_crops) == (1, 3)
        # The official test: SlowFast's loader without offset, short side = crop, raw logits summed.
        assert (spec.protocol.anchor, spec.protocol.short_side, spec.protocol.aggregation) == ("slowfast", size, "logits")
        assert spec.preprocess.mean == (0.45, 0.45, 0.45) and spec.preprocess.std == (0.225, 0.225, 0.225)
    assert {"timesformer_tiny", "timesformer_tiny_space_only", "timesformer_tiny_joint"} <= set(list_models())
    with torch.device("meta"):
        assert create_model("timesformer_tiny_space_only", **SMALL).attention_type == "space_only"


@pytest.mark.parametrize("name", ["timesformer_tiny", "timesformer_tiny_joint", "timesformer_tiny_space_only"])
def test_tiny_variants_map_a_bcthw_clip_to_logits_and_embeddings(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **SMALL).eval()
    with torch.no_grad():
        assert model(_clip()).shape == (2, 7)
        assert model.forward_features(_clip()).shape == (2, 192)


@pytest.mark.parametrize(
    "name, calls", [("timesformer_tiny", 8), ("timesformer_tiny_joint", 4), ("timesformer_tiny_space_only", 4)]
)
def test_every_attention_runs_as_a_fused_sdpa_kernel_and_nothing_computes_a_softmax(name, calls):
    model = create_model(name, **SMALL).eval()
    with torch.no_grad(), AtenOps() as ops:
        model(_clip(batch=1))
    fused = sum(n for op, n in ops.counts.items() if op.startswith("aten._scaled_dot_product"))
    assert fused == calls  # divided: temporal + spatial per block; the others: one per block
    assert not any("softmax" in op for op in ops.counts)


def test_space_only_attention_is_blind_to_frame_order_and_divided_attention_is_not():
    torch.manual_seed(0)
    clip = _clip(batch=1)
    reversed_clip = clip.flip(2)
    space_only = create_model("timesformer_tiny_space_only", **SMALL).eval()
    divided = create_model("timesformer_tiny", **SMALL).eval()
    # Attention over time is order-blind by itself; order reaches it through the time embeddings.
    # Temporal branches start at zero (paper init) in all blocks but the first; wake them up too.
    torch.nn.init.normal_(divided.time_embed.weight, std=1.0)
    for block in divided.blocks:
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.05)
    with torch.no_grad():
        torch.testing.assert_close(space_only(clip), space_only(reversed_clip), rtol=1e-4, atol=1e-5)
        assert (divided(clip) - divided(reversed_clip)).abs().max() > 1e-3


def test_temporal_branches_start_at_zero_except_in_the_first_block():
    model = create_model("timesformer_tiny", **SMALL)
    assert model.blocks[0].temporal_fc.weight.abs().sum() > 0
    assert all(block.temporal_fc.weight.abs().sum() == 0 for block in model.blocks[1:])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model("timesformer_tiny", num_classes=4, **MINI).train()
    checkpointed = create_model("timesformer_tiny", num_classes=4, grad_checkpointing=True, **MINI).train()
    checkpointed.load_state_dict(plain.state_dict())
    clip = _clip(batch=1, size=32)
    plain(clip).square().sum().backward()
    checkpointed(clip).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_drop_path_makes_training_stochastic_and_leaves_evaluation_deterministic():
    torch.manual_seed(0)
    model = create_model("timesformer_tiny", drop_path_rate=0.5, **MINI)
    assert model.blocks[0].drop_path.p == 0.0 and model.blocks[-1].drop_path.p == 0.5
    clip = _clip(batch=4, size=32)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(clip), model(clip))
        model.eval()
        assert torch.equal(model(clip), model(clip))


def test_bf16_autocast_output_is_close_to_fp32_with_the_same_top1():
    torch.manual_seed(0)
    model = create_model("timesformer_tiny", num_classes=10, **SMALL).eval()
    # A head with a spread of logits, so top-1 is a question of the features, not of ties.
    torch.nn.init.normal_(model.head.weight, std=1.0)
    for block in model.blocks:
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.02)
    clip = _clip(batch=4)
    with torch.no_grad():
        fp32 = model(clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(clip)
    assert bf16.dtype == torch.bfloat16
    assert ((bf16.float() - fp32).norm() / fp32.norm()) < 0.05
    assert torch.equal(bf16.float().argmax(1), fp32.argmax(1))


@pytest.mark.parametrize("block_type", [DividedSpaceTimeBlock, Block])
def test_a_block_compiles_as_one_graph_without_breaks(block_type):
    torch._dynamo.reset()
    block = block_type(64, 4).eval()
    tokens = torch.randn(1, 1 + 4 * 9, 64)
    explanation = torch._dynamo.explain(block)(tokens, (4, 3, 3))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
