"""ViViT: the four model variants, their parameter counts, configurations and execution modes."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spatiotemporal.layers.space_time_attention import (
    Block,
    FactorisedDotProductAttention,
    FactorisedDotProductBlock,
    FactorisedSelfAttentionBlock,
)
from spatiotemporal.models import count_parameters, create_model, get_spec

TINY = ["vivit_tiny", "vivit_tiny_fe", "vivit_tiny_fsa", "vivit_tiny_fdp"]
# Tests run the tiny configs at 4 frames of 64 px (2 x 4 x 4 tubelets).
SMALL = {"num_frames": 4, "image_size": 64}
# Training-mode checks: the smallest clip that still has several frames and patches.
MINI = {"num_frames": 4, "image_size": 32}


class AtenOps(TorchDispatchMode):
    """Counts the aten operators a forward pass actually runs."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _clip(batch: int = 2, frames: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, published",
    [("vivit_b_joint", 88.9), ("vivit_b_fe", 115.1), ("vivit_b_fsa", 117.3), ("vivit_b_fdp", 88.9)],
)
def test_vivit_b_variants_have_the_published_parameter_counts_with_a_400_class_head(name, published):
    with torch.device("meta"):
        model = create_model(name)
    assert get_spec(name).published_params_m == published
    assert abs(count_parameters(model) / 1e6 - published) / published < 0.005


def test_registered_configs_carry_32x2_tubelets_the_4x3_logit_protocol_and_minus_one_to_one_inputs():
    for name in ["vivit_b_joint", "vivit_b_fe", "vivit_l_fe", "vivit_b_fsa", "vivit_b_fdp"]:
        spec = get_spec(name)
        assert (spec.num_frames, spec.frame_stride, spec.crop_size) == (32, 2, 224)
        assert spec.kwargs.get("tubelet_size", (2, 16, 16)) == (2, 16, 16)
        assert (spec.protocol.temporal_views, spec.protocol.spatial_crops) == (4, 3)
        assert spec.protocol.aggregation == "logits"
        # scenic: short side 256 (`min_resize`), then DMVR's linspace of clip starts.
        assert (spec.protocol.short_side, spec.protocol.anchor) == (256, "dmvr")
        assert spec.preprocess.mean == (0.5, 0.5, 0.5) and spec.preprocess.std == (0.5, 0.5, 0.5)
    with torch.device("meta"):
        large = create_model("vivit_l_fe")
    assert (large.embed_dim, len(large.blocks), len(large.temporal_blocks)) == (1024, 24, 4)


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_map_a_bcthw_clip_to_logits_and_embeddings(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **SMALL).eval()
    with torch.no_grad():
        assert model(_clip()).shape == (2, 7)
        assert model.forward_features(_clip()).shape == (2, 192)


@pytest.mark.parametrize("name, calls", [("vivit_tiny", 4), ("vivit_tiny_fe", 6), ("vivit_tiny_fsa", 8),
                                         ("vivit_tiny_fdp", 8)])
def test_every_attention_runs_as_a_fused_sdpa_kernel_and_nothing_computes_a_softmax(name, calls):
    model = create_model(name, **SMALL).eval()
    with torch.no_grad(), AtenOps() as ops:
        model(_clip(batch=1))
    fused = sum(n for op, n in ops.counts.items() if op.startswith("aten._scaled_dot_product"))
    assert fused == calls
    assert not any("softmax" in op for op in ops.counts)


def test_models_3_and_4_have_no_class_token_and_models_1_and_2_do():
    with torch.device("meta"):
        assert create_model("vivit_b_joint").cls_token is not None
        assert create_model("vivit_b_fe").temporal_cls_token is not None
        assert create_model("vivit_b_fsa").cls_token is None
        assert create_model("vivit_b_fdp").cls_token is None


def test_factorised_dot_product_heads_see_only_their_frame_or_their_location():
    torch.manual_seed(0)
    attention = FactorisedDotProductAttention(dim=32, num_heads=4).eval()
    grid = (3, 2, 2)  # T=3 frames of N=4 tokens
    tokens = torch.randn(1, 12, 32)
    changed = tokens.clone()
    changed[0, 1 * 4 + 2] += 1.0  # frame 1, location 2
    with torch.no_grad():
        delta = (attention(changed, grid) - attention(tokens, grid)).abs().amax(-1).reshape(3, 4)
    same_frame_or_location = torch.zeros(3, 4, dtype=torch.bool)
    same_frame_or_location[1, :] = True
    same_frame_or_location[:, 2] = True
    assert (delta[same_frame_or_location] > 1e-4).all()
    assert (delta[~same_frame_or_location] == 0).all()


def test_factorised_encoder_embeds_a_clip_as_its_temporal_class_token_over_per_frame_class_tokens():
    torch.manual_seed(0)
    model = create_model("vivit_tiny_fe", num_classes=3, **SMALL).eval()
    clip = _clip(batch=1)
    with torch.no_grad():
        features = model.forward_features(clip)
        # Recompute the temporal stage by hand from the spatial encoder's per-frame class tokens.
        tokens, grid = model.patch_embed(clip)
        frames = torch.cat([model.cls_token.expand(grid[0], -1, -1), tokens[0]], dim=1)
        frames = frames + model.pos_embed.weight
        for block in model.blocks:
            frames = block(frames, grid)
        per_frame = model.norm(frames)[:, 0][None]
        sequence = torch.cat([model.temporal_cls_token, per_frame], dim=1) + model.temporal_pos_embed.weight
        for block in model.temporal_blocks:
            sequence = block(sequence, grid)
        torch.testing.assert_close(features, model.temporal_norm(sequence[:, 0]))
    assert model.temporal_pos_embed.weight.shape == (1, 1 + 2, 192)
    assert model.head.weight.abs().sum() == 0  # the reference starts the classifier at zero


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model("vivit_tiny_fsa", num_classes=4, **MINI).train()
    checkpointed = create_model("vivit_tiny_fsa", num_classes=4, grad_checkpointing=True, **MINI).train()
    torch.nn.init.normal_(plain.head.weight)
    checkpointed.load_state_dict(plain.state_dict())
    clip = _clip(batch=1, size=32)
    plain(clip).square().sum().backward()
    checkpointed(clip).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["vivit_tiny", "vivit_tiny_fdp"])
def test_bf16_autocast_output_is_close_to_fp32_with_the_same_top1(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **SMALL).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # the reference head starts at zero
    clip = _clip(batch=4)
    with torch.no_grad():
        fp32 = model(clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(clip)
    assert bf16.dtype == torch.bfloat16
    assert ((bf16.float() - fp32).norm() / fp32.norm()) < 0.05
    assert torch.equal(bf16.float().argmax(1), fp32.argmax(1))


@pytest.mark.parametrize("block_type", [FactorisedSelfAttentionBlock, FactorisedDotProductBlock, Block])
def test_a_block_compiles_as_one_graph_without_breaks(block_type):
    torch._dynamo.reset()
    block = block_type(64, 4).eval()
    tokens = torch.randn(1, 4 * 9, 64)
    explanation = torch._dynamo.explain(block)(tokens, (4, 3, 3))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
