"""Checkpoint import for MViTv2 and Video Swin: torchvision parity, official layouts, strict keys.

Each reference is built with random weights (nothing is downloaded), saved to a file, loaded through
`create_model(..., pretrained=PATH)`, and fed the same clip.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video import mvit_v2_s, swin3d_t
from torchvision.models.video.swin_transformer import SwinTransformer3d

from spatiotemporal.convert import detect_layout, load_pretrained, official_slowfast, official_videoswin
from spatiotemporal.io.errors import CheckpointError, InputError
from spatiotemporal.models import create_model


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


def test_mvit_v2_s_loads_from_torchvision_and_matches_it(tmp_path):
    torch.manual_seed(0)
    ref = mvit_v2_s().eval()  # torchvision's MViT only takes its 16x224 training size
    path = tmp_path / "mvit_v2_s.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model("mvitv2_s", pretrained=str(path)).eval()
    clip = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        assert relative_error(ours(clip), ref(clip)) <= 1e-4


def test_swin3d_t_loads_from_torchvision_and_matches_it(tmp_path):
    torch.manual_seed(0)
    ref = swin3d_t().eval()
    path = tmp_path / "swin3d_t.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model("swin3d_t", pretrained=str(path)).eval()
    clip = torch.randn(1, 3, 8, 224, 224)  # 4 token frames: the 8-frame window is clipped in time
    with torch.no_grad():
        assert relative_error(ours(clip), ref(clip)) <= 1e-4


def _torchvision_swin_tiny() -> SwinTransformer3d:
    return SwinTransformer3d(
        patch_size=[2, 4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=[4, 7, 7]
    )


def test_a_torchvision_layout_with_foreign_and_missing_keys_is_refused_with_both_listed(tmp_path):
    state = _torchvision_swin_tiny().state_dict()
    del state["features.0.1.attn.qkv.weight"]
    state["features.0.1.attn.extra_scale"] = torch.ones(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        create_model("swin3d_tiny", pretrained=str(path))
    message = str(err.value)
    assert isinstance(err.value, InputError) and str(path) in message
    assert "missing keys: stages.0.blocks.1.attn.qkv.weight" in message
    assert "unexpected keys: stages.0.blocks.1.attn.extra_scale" in message


def test_strict_false_loads_what_fits_and_leaves_the_rest(tmp_path):
    ref = _torchvision_swin_tiny()
    state = ref.state_dict()
    del state["head.weight"]
    path = tmp_path / "no_head.pth"
    torch.save(state, path)
    model = create_model("swin3d_tiny", num_classes=400, pretrained=str(path), strict=False)
    assert torch.equal(model.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    assert not torch.equal(model.head.weight, ref.head.weight)


def test_a_small_torchvision_swin_with_padding_and_clipping_matches_too(tmp_path):
    torch.manual_seed(0)
    ref = _torchvision_swin_tiny().eval()
    path = tmp_path / "tiny.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model("swin3d_tiny", pretrained=str(path)).eval()
    clip = torch.randn(2, 3, 6, 112, 112)  # 3 token frames (< 4-frame window), 28 -> 14 -> 7 -> 4 space
    with torch.no_grad():
        # Spatial windows stay whole until the last stage (4x4 < 7x7), where torchvision takes the
        # first N rows of the full-window index; compare the stages before that one exactly.
        got, expected = ours.patch_embed(clip), ref.patch_embed(clip)
        for i in range(3):
            got, expected = ours.stages[i](got), ref.features[2 * i + 1](ref.features[2 * i](expected))
        assert relative_error(got, expected) <= 1e-5


def test_slowfast_mvitv2_pyth_round_trips(tmp_path):
    torch.manual_seed(0)
    source = create_model("mvitv2_tiny", num_classes=5).eval()
    slowfast_state = official_slowfast.from_ours(source.state_dict())
    # The names SlowFast's MViT (video_model_builder.py / attention.py) saves.
    for key in (
        "patch_embed.proj.weight",
        "cls_token",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.pool_q.weight",
        "blocks.1.attn.norm_q.weight",
        "blocks.1.attn.rel_pos_t",
        "blocks.1.proj.weight",
        "blocks.1.mlp.fc1.weight",
        "norm.weight",
        "head.projection.weight",
    ):
        assert key in slowfast_state, key
    path = tmp_path / "MViTv2_tiny.pyth"
    torch.save({"model_state": slowfast_state, "epoch": 200}, path)
    loaded = create_model("mvitv2_tiny", num_classes=5)
    assert load_pretrained(loaded, path) == "slowfast"
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(clip), source(clip))


def test_official_video_swin_pth_round_trips(tmp_path):
    torch.manual_seed(0)
    source = create_model("swin3d_tiny", num_classes=5).eval()
    official_state = official_videoswin.from_ours(source.state_dict(), window_size=(4, 7, 7))
    for key in (
        "backbone.patch_embed.proj.weight",
        "backbone.patch_embed.norm.weight",
        "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
        "backbone.layers.0.blocks.1.attn.relative_position_index",
        "backbone.layers.0.blocks.1.mlp.fc2.weight",
        "backbone.layers.2.downsample.reduction.weight",
        "backbone.norm.weight",
        "cls_head.fc_cls.weight",
    ):
        assert key in official_state, key
    path = tmp_path / "swin_tiny_patch244_window477.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": official_state}, path)
    loaded = create_model("swin3d_tiny", num_classes=5)
    assert load_pretrained(loaded, path) == "videoswin"
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(clip), source(clip))


def test_each_layout_is_told_apart_from_our_own():
    with torch.device("meta"):
        mvit, swin = create_model("mvitv2_tiny"), create_model("swin3d_tiny")
    assert detect_layout(mvit.state_dict(), "mvitv2").NAME == "spatiotemporal"
    assert detect_layout(swin.state_dict(), "video_swin").NAME == "spatiotemporal"
    assert detect_layout(official_slowfast.from_ours(mvit.state_dict()), "mvitv2").NAME == "slowfast"
    assert detect_layout(official_videoswin.from_ours(swin.state_dict()), "video_swin").NAME == "videoswin"
    tv_swin = _torchvision_swin_tiny().state_dict()
    assert detect_layout(tv_swin, "video_swin").NAME == "torchvision"
