"""MViTv2: configurations, pooling attention with decomposed relative positions, and training knobs."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video.mvit import MultiscaleAttention

from spatiotemporal.layers.pooling_attention import PoolingAttention, decomposed_rel_pos_channels, resize_rel_pos
from spatiotemporal.models import count_parameters, create_model, get_spec
from spatiotemporal.models.mvitv2 import CONFIGS, block_settings
from spatiotemporal.tokens.conv_embed import ConvPatchEmbed3d


@pytest.mark.parametrize("name, published", [("mvitv2_s", 34.5), ("mvitv2_b", 51.2)])
def test_parameter_count_is_within_half_a_percent_of_the_paper(name, published):
    with torch.device("meta"):
        model = create_model(name, num_classes=400)
    assert get_spec(name).published_params_m == published
    assert abs(count_parameters(model) / 1e6 - published) / published < 0.005


def test_specs_carry_the_papers_input_preprocessing_and_test_protocol():
    small, base = get_spec("mvitv2_s"), get_spec("mvitv2_b")
    assert (small.num_frames, small.frame_stride, small.crop_size) == (16, 4, 224)
    assert (base.num_frames, base.frame_stride, base.crop_size) == (32, 3, 224)
    for spec in (small, base, get_spec("mvitv2_tiny")):
        assert spec.preprocess.mean == (0.45, 0.45, 0.45) and spec.preprocess.std == (0.225, 0.225, 0.225)
    assert (small.protocol.temporal_views, small.protocol.spatial_crops) == (5, 1)
    assert (base.protocol.temporal_views, base.protocol.spatial_crops) == (5, 1)
    for spec in (small, base):
        # SlowFast with USE_OFFSET_SAMPLING; one crop means resizing to TRAIN_JITTER_SCALES[0] = 256 first.
        assert (spec.protocol.anchor, spec.protocol.short_side) == ("slowfast_offset", 256)


def test_conv_patch_embedding_maps_16x224_to_an_8x56x56_grid():
    embed = ConvPatchEmbed3d(3, 96)
    assert embed.proj.kernel_size == (3, 7, 7) and embed.proj.stride == (2, 4, 4) and embed.proj.padding == (1, 3, 3)
    with torch.device("meta"):
        tokens, thw = ConvPatchEmbed3d(3, 96)(torch.empty(2, 3, 16, 224, 224))
    assert thw == (8, 56, 56) and tokens.shape == (2, 8 * 56 * 56, 96)


def test_mvitv2_s_blocks_follow_the_torchvision_table():
    settings = block_settings(CONFIGS["mvitv2_s"])
    assert [s.num_heads for s in settings] == [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8]
    assert [s.dim for s in settings] == [96, 96, 192, 192] + [384] * 11 + [768]
    assert [s.dim_out for s in settings] == [96, 192, 192] + [384] * 11 + [768, 768]
    q_down = [i for i, s in enumerate(settings) if s.stride_q == (1, 2, 2)]
    assert q_down == [1, 3, 14]
    assert [s.stride_kv for s in settings[:4]] == [(1, 8, 8), (1, 4, 4), (1, 4, 4), (1, 2, 2)]
    assert settings[14].stride_kv == settings[15].stride_kv == (1, 1, 1)


def test_decomposed_rel_pos_channels_multiply_to_the_sum_of_three_axis_dot_products():
    torch.manual_seed(0)
    q_thw, k_thw, d = (2, 4, 4), (2, 2, 2), 8
    q = torch.randn(1, 2, 32, d)
    tables = [torch.randn(2 * max(a, b) - 1, d) for a, b in zip(q_thw, k_thw)]
    q_rel, k_rel = decomposed_rel_pos_channels(q, q_thw, k_thw, *tables)
    assert q_rel.shape == (1, 2, 32, 2 + 2 + 2) and k_rel.shape == (8, 6)
    bias = q_rel @ k_rel.T
    # Explicitly: keys on the coarser grid are scaled to the query grid before taking distances.
    expected = torch.zeros_like(bias)
    qi = [(t, h, w) for t in range(2) for h in range(4) for w in range(4)]
    ki = [(t, h, w) for t in range(2) for h in range(2) for w in range(2)]
    for a, (qt, qh, qw) in enumerate(qi):
        for b, (kt, kh, kw) in enumerate(ki):
            dt = qt - kt + 1  # equal t grids: offset by k_t - 1
            dh = qh - 2 * kh + 2  # keys at half resolution: k scaled by 2, offset (k_h - 1) * 2
            dw = qw - 2 * kw + 2
            rt, rh, rw = tables[0][dt], tables[1][dh], tables[2][dw]
            expected[0, :, a, b] = q[0, :, a] @ rt + q[0, :, a] @ rh + q[0, :, a] @ rw
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-5)


def test_the_class_token_neither_gives_nor_gets_relative_positions():
    torch.manual_seed(0)
    q = torch.randn(2, 1, 1 + 8, 4)
    tables = [torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)]
    q_rel, k_rel = decomposed_rel_pos_channels(q, (2, 2, 2), (2, 2, 2), *tables, has_cls=True)
    assert q_rel.shape == (2, 1, 9, 6) and k_rel.shape == (9, 6)
    assert torch.all(q_rel[:, :, 0] == 0) and torch.all(k_rel[0] == 0)
    grid_q_rel, grid_k_rel = decomposed_rel_pos_channels(q[:, :, 1:], (2, 2, 2), (2, 2, 2), *tables)
    torch.testing.assert_close(q_rel[:, :, 1:], grid_q_rel)
    torch.testing.assert_close(k_rel[1:], grid_k_rel)


def test_rel_pos_tables_are_linearly_resampled_for_other_grids():
    table = torch.tensor([[0.0], [1.0], [2.0]])
    assert resize_rel_pos(table, 3) is table
    torch.testing.assert_close(resize_rel_pos(table, 5).flatten(), torch.tensor([0.0, 0.4, 1.0, 1.6, 2.0]))


@pytest.mark.parametrize("stride_q, stride_kv", [((1, 2, 2), (1, 2, 2)), ((1, 1, 1), (1, 4, 4))])
def test_pooling_attention_matches_torchvision_multiscale_attention(stride_q, stride_kv):
    torch.manual_seed(0)
    grid, dim, dim_out, heads = (4, 8, 8), 16, 32, 2
    ref = MultiscaleAttention(
        list(grid), dim, dim_out, heads, [3, 3, 3], [3, 3, 3], list(stride_q), list(stride_kv),
        residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
    ).eval()
    ours = PoolingAttention(dim, dim_out, heads, grid, stride_q=stride_q, stride_kv=stride_kv).eval()
    renames = {"project.0.": "proj.", ".pool.": ".conv.", ".norm_act.0.": ".norm."}
    state = {}
    for key, value in ref.state_dict().items():
        for old, new in renames.items():
            key = key.replace(old, new)
        state[key] = value
    ours.load_state_dict(state)
    x = torch.randn(2, 1 + 4 * 8 * 8, dim)
    with torch.no_grad():
        expected, expected_thw = ref(x, grid)
        got, thw = ours(x, grid)
    assert thw == tuple(expected_thw)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_tiny_model_gives_logits_and_embeddings_at_its_own_and_other_sizes():
    torch.manual_seed(0)
    model = create_model("mvitv2_tiny", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 96, 96)).shape == (2, 7)
        assert model.forward_features(torch.randn(1, 3, 8, 96, 96)).shape == (1, model.num_features)
        # Other frame counts and resolutions interpolate the relative-position tables.
        assert model(torch.randn(1, 3, 4, 64, 64)).shape == (1, 7)
        assert model(torch.randn(1, 3, 12, 112, 112)).shape == (1, 7)


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = create_model("mvitv2_tiny", num_classes=5, drop_path=0.5)
    x = torch.randn(2, 3, 4, 64, 64)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("mvitv2_tiny", num_classes=5).train()
    x = torch.randn(1, 3, 4, 64, 64)
    torch.manual_seed(1)  # the same head-dropout draw in both passes
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bfloat16_autocast_keeps_the_top1_and_close_logits():
    torch.manual_seed(0)
    model = create_model("mvitv2_tiny", num_classes=10).eval()
    x = torch.randn(4, 3, 4, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
    assert torch.equal(fp32.argmax(1), bf16.argmax(1))
    assert (bf16 - fp32).norm() / fp32.norm() < 0.03


def test_a_block_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = create_model("mvitv2_tiny", num_classes=5).eval()
    block = model.blocks[1]  # pools queries: stride, channel expansion and residual pooling
    x = torch.randn(1, 1 + 4 * 24 * 24, 32)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected, thw = block(x, (4, 24, 24))
        got, compiled_thw = compiled(x, (4, 24, 24))
    assert compiled_thw == thw == (4, 12, 12)
    torch.testing.assert_close(got, expected)


def test_a_checkpoint_loads_into_a_model_built_for_more_frames_and_pixels(tmp_path):
    torch.manual_seed(0)
    source = create_model("mvitv2_tiny", num_classes=5)  # tables sized for 8 frames at 96 px
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    bigger = create_model("mvitv2_tiny", num_classes=5, num_frames=16, img_size=128, pretrained=str(path))
    table, resized = source.blocks[0].attn.rel_pos_t, bigger.blocks[0].attn.rel_pos_t
    assert (table.shape[0], resized.shape[0]) == (7, 15)
    torch.testing.assert_close(resized, resize_rel_pos(table.detach(), 15))
    torch.testing.assert_close(bigger.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
