"""Patch/tubelet embeddings and learned position tables, with their interpolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spatiotemporal.models import create_model
from spatiotemporal.tokens import (
    LearnedPosEmbed,
    PatchEmbed2d,
    TubeletEmbed,
    inflate_patch_weight,
    interpolate_pos_embed,
)
from spatiotemporal.tokens.pos_embed import PositionTableError, grid_candidates


def test_patch_embed_tokens_are_each_frame_convolved_in_frame_then_row_major_order():
    torch.manual_seed(0)
    embed = PatchEmbed2d(in_channels=3, dim=8, patch_size=16)
    video = torch.randn(2, 3, 4, 32, 48)
    tokens, grid = embed(video)
    assert grid == (4, 2, 3)
    assert tokens.shape == (2, 4, 6, 8)
    frame = F.conv2d(video[1, :, 2][None], embed.proj.weight, embed.proj.bias, stride=16)  # (1, 8, 2, 3)
    torch.testing.assert_close(tokens[1, 2], frame[0].flatten(1).T)


def test_tubelet_embed_rejects_clips_that_are_not_a_whole_number_of_tubelets():
    embed = TubeletEmbed(3, 8, (2, 16, 16))
    with pytest.raises(ValueError, match="not a multiple of the tubelet size"):
        embed(torch.randn(1, 3, 5, 32, 32))


def test_filter_inflation_embeds_a_static_clip_as_the_image_embedding_of_its_frame():
    torch.manual_seed(0)
    image = PatchEmbed2d(3, 8, 16)
    tubelet = TubeletEmbed(3, 8, (4, 16, 16))
    tubelet.init_from_2d(image.proj.weight, image.proj.bias, mode="filter_inflation")
    frame = torch.randn(1, 3, 1, 32, 32)
    static_clip = frame.expand(-1, -1, 4, -1, -1)
    tokens, _ = tubelet(static_clip)
    expected, _ = image(frame)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_central_frame_init_embeds_a_tubelet_as_its_middle_frame_and_ignores_the_others():
    torch.manual_seed(0)
    image = PatchEmbed2d(3, 8, 16)
    tubelet = TubeletEmbed(3, 8, (3, 16, 16))
    tubelet.init_from_2d(image.proj.weight, image.proj.bias, mode="central_frame")
    clip = torch.randn(1, 3, 3, 32, 32)
    tokens, _ = tubelet(clip)
    expected, _ = image(clip[:, :, 1:2])
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
    weight = inflate_patch_weight(image.proj.weight, 3, "central_frame")
    assert weight[:, :, 0].abs().sum() == 0 and weight[:, :, 2].abs().sum() == 0


def test_unknown_inflation_mode_is_refused():
    with pytest.raises(ValueError, match="unknown inflation mode"):
        inflate_patch_weight(torch.zeros(8, 3, 16, 16), 2, "average")


def test_temporal_table_is_linearly_interpolated_with_half_pixel_centres():
    table = torch.arange(4.0).reshape(1, 4, 1)
    resized = interpolate_pos_embed(table, (4,), (8,))
    expected = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    torch.testing.assert_close(resized.flatten(), expected)


def test_spatial_interpolation_keeps_the_class_token_and_a_constant_table_constant():
    cls = torch.full((1, 1, 4), 7.0)
    body = torch.full((1, 14 * 14, 4), 0.5)
    resized = interpolate_pos_embed(torch.cat([cls, body], 1), (14, 14), (20, 10), num_prefix_tokens=1)
    assert resized.shape == (1, 1 + 200, 4)
    torch.testing.assert_close(resized[:, :1], cls)
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 200, 4), 0.5))


def test_joint_table_of_another_frame_count_is_resized_along_time_only():
    embed = LearnedPosEmbed((4, 2, 2), dim=3, num_prefix_tokens=1)
    # A checkpoint table for 2 temporal positions: rows constant over space, 10 then 20 over time.
    ckpt = torch.cat([torch.zeros(1, 1, 3), torch.full((1, 4, 3), 10.0), torch.full((1, 4, 3), 20.0)], 1)
    adapted = embed.adapt_table(ckpt)
    assert adapted.shape == embed.weight.shape
    per_time = adapted[0, 1:, 0].reshape(4, 4)[:, 0]
    torch.testing.assert_close(per_time, torch.tensor([10.0, 12.5, 17.5, 20.0]))


def test_a_checkpoint_trained_at_another_frame_count_and_size_loads_with_resized_tables(tmp_path):
    torch.manual_seed(0)
    source = create_model("timesformer_tiny", num_classes=5)  # 8 frames, 112 px
    with torch.no_grad():
        source.time_embed.weight.normal_()  # it starts at zero, which any resize keeps
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    target = create_model("timesformer_tiny", num_classes=5, num_frames=4, image_size=64, pretrained=str(path))
    assert target.time_embed.weight.shape == (1, 4, 192)
    assert target.pos_embed.weight.shape == (1, 1 + 16, 192)
    # TimeSformer resizes its tables with 'nearest', as its reference code does.
    expected_time = interpolate_pos_embed(source.time_embed.weight, (8,), (4,), mode="nearest")
    torch.testing.assert_close(target.time_embed.weight, expected_time, rtol=0, atol=0)
    expected_space = interpolate_pos_embed(source.pos_embed.weight, (7, 7), (4, 4), 1, mode="nearest")
    torch.testing.assert_close(target.pos_embed.weight, expected_space, rtol=0, atol=0)
    torch.testing.assert_close(target.blocks[2].attn.qkv.weight, source.blocks[2].attn.qkv.weight)
    assert target(torch.randn(1, 3, 4, 64, 64)).shape == (1, 5)


def test_inputs_of_another_size_than_configured_use_interpolated_tables_on_the_fly():
    torch.manual_seed(0)
    model = create_model("vivit_tiny", num_classes=3).eval()  # 8 frames at 112
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 96, 128)).shape == (1, 3)


def test_nearest_resizing_repeats_rows_as_the_timesformer_reference_does():
    table = torch.arange(4.0).reshape(1, 4, 1)
    resized = interpolate_pos_embed(table, (4,), (8,), mode="nearest")
    torch.testing.assert_close(resized.flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))


def test_a_space_time_table_may_fit_other_frames_or_another_size_and_both_are_candidates():
    assert grid_candidates(196, (4, 14, 14)) == [(1, 14, 14), (4, 7, 7)]
    assert grid_candidates(392, (4, 14, 14)) == [(2, 14, 14)]
    assert grid_candidates(3 * 5 * 5, (4, 14, 14)) == []


def test_an_ambiguous_table_is_not_guessed():
    embed = LearnedPosEmbed((4, 14, 14), dim=2, num_prefix_tokens=1)
    with pytest.raises(PositionTableError, match=r"fits the grids 1 \+ \(1, 14, 14\) and 1 \+ \(4, 7, 7\)"):
        embed.adapt_table(torch.zeros(1, 1 + 196, 2))


def test_a_table_is_resized_from_the_grid_it_is_said_to_have():
    embed = LearnedPosEmbed((4, 14, 14), dim=2, num_prefix_tokens=1)
    table = torch.randn(1, 1 + 196, 2)
    adapted = embed.adapt_table(table, (4, 7, 7), 1)
    torch.testing.assert_close(adapted, interpolate_pos_embed(table, (4, 7, 7), (4, 14, 14), 1), rtol=0, atol=0)
    with pytest.raises(PositionTableError, match=r"the table has 197 tokens, but the checkpoint's geometry gives 1 \+"):
        embed.adapt_table(table, (2, 7, 7), 1)
