"""Video Swin: configurations, 3D patch partition/merging, (shifted) window attention, training knobs."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.swin_transformer import PatchMerging
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, _compute_attention_mask_3d

from spatiotemporal.layers.window_attention3d import (
    WindowAttention3d,
    clip_window,
    relative_position_index,
    shift_region_ids,
)
from spatiotemporal.models import count_parameters, create_model, get_spec
from spatiotemporal.tokens.conv_embed import PatchMerging3d, PatchPartition3d


@pytest.mark.parametrize("name, published", [("swin3d_t", 28.16), ("swin3d_s", 49.82), ("swin3d_b", 88.05)])
def test_parameter_count_is_within_half_a_percent_of_torchvision(name, published):
    with torch.device("meta"):
        model = create_model(name, num_classes=400)
    assert get_spec(name).published_params_m == published
    assert abs(count_parameters(model) / 1e6 - published) / published < 0.005


def test_specs_carry_imagenet_statistics_and_the_4x3_protocol():
    for name in ("swin3d_t", "swin3d_s", "swin3d_b", "swin3d_tiny"):
        spec = get_spec(name)
        assert spec.preprocess.mean == (0.485, 0.456, 0.406)
        assert spec.preprocess.std == (0.229, 0.224, 0.225)
    spec = get_spec("swin3d_t")
    assert (spec.protocol.temporal_views, spec.protocol.spatial_crops) == (4, 3)
    assert (spec.num_frames, spec.frame_stride, spec.crop_size) == (32, 2, 224)
    # Its mmaction2 0.x test pipeline: clips at interval centres, Resize(-1, 224), ThreeCrop(224), prob average.
    assert (spec.protocol.anchor, spec.protocol.short_side, spec.protocol.aggregation) == ("mmaction2_0x", 224, "softmax")


def test_patch_partition_pads_the_clip_up_to_whole_2x4x4_patches():
    embed = PatchPartition3d((2, 4, 4), 3, 8)
    assert embed(torch.randn(1, 3, 7, 30, 30)).shape == (1, 4, 8, 8, 8)


def test_patch_merging_concatenates_neighbours_in_the_reference_order():
    torch.manual_seed(0)
    ref, ours = PatchMerging(6), PatchMerging3d(6)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 5, 7, 6)  # odd H and W are padded
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    assert ours(x).shape == (2, 3, 3, 4, 12)


def test_relative_position_index_matches_the_reference():
    ref = ShiftedWindowAttention3d(12, [8, 7, 7], [4, 3, 3], 3)
    assert torch.equal(relative_position_index((8, 7, 7)), ref.relative_position_index)


def test_shift_mask_separates_the_same_regions_as_the_reference():
    padded, window, shift = (8, 14, 14), (4, 7, 7), (2, 3, 3)
    ids = shift_region_ids(padded, window, shift, torch.device("cpu"))
    ours_apart = ids[:, :, None] != ids[:, None, :]
    ref_apart = _compute_attention_mask_3d(torch.zeros(1), padded, window, shift) != 0
    assert torch.equal(ours_apart, ref_apart)


def test_windows_larger_than_the_input_are_clipped_and_not_shifted():
    assert clip_window((4, 14, 5), (8, 7, 7), (4, 3, 3)) == ((4, 7, 5), (0, 3, 0))


def test_a_clipped_window_takes_the_bias_of_its_true_offsets():
    torch.manual_seed(0)
    attn = WindowAttention3d(8, 2, (2, 3, 3))
    bias = attn.relative_position_bias((1, 2, 2))
    table = attn.relative_position_bias_table  # rows indexed by (dt+1)*25 + (dh+2)*5 + (dw+2)
    coords = [(0, h, w) for h in range(2) for w in range(2)]
    for i, (ti, hi, wi) in enumerate(coords):
        for j, (tj, hj, wj) in enumerate(coords):
            row = (ti - tj + 1) * 25 + (hi - hj + 2) * 5 + (wi - wj + 2)
            assert torch.equal(bias[:, i, j], table[row])


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((4, 14, 14), (8, 7, 7), (4, 3, 3)),  # time clipped to the input, space shifted
        ((3, 10, 9), (2, 7, 7), (1, 3, 3)),  # padding to whole windows, shifted everywhere
        ((4, 14, 14), (2, 7, 7), (0, 0, 0)),  # regular windows
    ],
)
def test_window_attention_matches_torchvision(grid, window, shift):
    torch.manual_seed(0)
    ref = ShiftedWindowAttention3d(24, list(window), list(shift), 3).eval()
    ours = WindowAttention3d(24, 3, window, shift).eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "relative_position_index"})
    x = torch.randn(2, *grid, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_tiny_model_gives_logits_and_embeddings_at_any_size():
    torch.manual_seed(0)
    model = create_model("swin3d_tiny", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 112, 112)).shape == (2, 7)
        assert model.forward_features(torch.randn(1, 3, 8, 112, 112)).shape == (1, model.num_features)
        assert model(torch.randn(1, 3, 6, 72, 100)).shape == (1, 7)


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = create_model("swin3d_tiny", num_classes=5, drop_path=0.5)
    x = torch.randn(2, 3, 4, 64, 64)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("swin3d_tiny", num_classes=5).train()
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
    model = create_model("swin3d_tiny", num_classes=10).eval()
    x = torch.randn(4, 3, 8, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
    assert torch.equal(fp32.argmax(1), bf16.argmax(1))
    assert (bf16 - fp32).norm() / fp32.norm() < 0.03


def test_a_shifted_block_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = create_model("swin3d_tiny", num_classes=5).eval()
    block = model.stages[0].blocks[1]
    assert block.attn.shift_size == (2, 3, 3)
    x = torch.randn(1, 4, 14, 14, 32)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x))


@pytest.mark.parametrize("through_data", [False, True], ids=["in_place", "through_data"])
def test_the_inference_mask_cache_follows_changes_to_the_bias_table(through_data):
    # A step or a load changes the table in place; `.data` writes (old-style optimizers and EMA
    # code) do too but leave its version counter where it was.
    torch.manual_seed(0)
    attn = WindowAttention3d(16, 2, (2, 4, 4), (1, 2, 2)).eval()
    x = torch.randn(1, 4, 8, 8, 16)
    table = attn.relative_position_bias_table
    with torch.no_grad():
        before = attn(x)
        version = table._version
        (table.data if through_data else table).add_(torch.randn_like(table))
        assert (table._version == version) == through_data
        after = attn(x)
    with torch.enable_grad():
        uncached = attn(x).detach()
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, uncached)


def test_config_fields_can_be_overridden_by_name_as_a_yaml_config_does():
    model = create_model("swin3d_tiny", num_classes=4, window_size=[4, 4, 4], head_dropout=0.0)
    assert model.config.window_size == (4, 4, 4) and model.config.head_dropout == 0.0
    assert model.config.embed_dim == 32  # the rest of swin3d_tiny stays
    assert model.stages[0].blocks[0].attn.window_size == (4, 4, 4)
