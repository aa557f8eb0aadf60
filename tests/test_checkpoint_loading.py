"""Loading video checkpoints into models of another geometry or variant: the checkpoint's own grid
decides how a position table is resized, class-token rows and 2D patch filters are adapted the way
the papers' code does, and whatever does not fit is named, never silently dropped or misread."""

from __future__ import annotations

import warnings

import pytest
import torch

from spatiotemporal.convert import LoadReport, load_pretrained, official_videoswin, read_checkpoint
from spatiotemporal.io.errors import CheckpointError
from spatiotemporal.models import create_model
from spatiotemporal.tokens import inflate_patch_weight, interpolate_pos_embed


def _ours(model, name: str, **model_kwargs) -> dict:
    """A checkpoint of ours: the weights with how to rebuild their model, as training writes it."""
    return {"model": model.state_dict(), "model_name": name, "model_kwargs": model_kwargs}


@pytest.fixture(scope="module")
def joint_112():
    """vivit_tiny (Model 1) at 8 frames of 112 px: a 1 + 4x7x7 space-time table."""
    torch.manual_seed(0)
    return create_model("vivit_tiny").eval()


def test_a_joint_table_is_resized_from_the_grid_our_checkpoint_records(tmp_path, joint_112):
    torch.save(_ours(joint_112, "vivit_tiny"), tmp_path / "model.pt")
    bigger = create_model("vivit_tiny", image_size=224, pretrained=str(tmp_path / "model.pt"))
    # 196 grid tokens would also be one frame of 14x14; the record says 4 frames of 7x7.
    expected = interpolate_pos_embed(joint_112.pos_embed.weight.detach(), (4, 7, 7), (4, 14, 14), 1)
    torch.testing.assert_close(bigger.pos_embed.weight, expected, rtol=0, atol=0)


def test_a_table_that_fits_two_grids_without_a_record_is_refused_naming_the_key_and_both(tmp_path, joint_112):
    path = tmp_path / "bare.pt"
    torch.save(joint_112.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        create_model("vivit_tiny", image_size=224, pretrained=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: pos_embed.weight: ")
    assert "1 + (1, 14, 14) and 1 + (4, 7, 7)" in message


def test_strict_false_leaves_an_ambiguous_table_out_and_says_why(tmp_path, joint_112):
    path = tmp_path / "bare.pt"
    torch.save(joint_112.state_dict(), path)
    model = create_model("vivit_tiny", image_size=224)
    initial = model.pos_embed.weight.detach().clone()
    with pytest.warns(UserWarning, match="shape mismatch keys: pos_embed.weight; pos_embed.weight: a 197-token"):
        report = load_pretrained(model, path, strict=False)
    assert report.mismatched == ("pos_embed.weight",) and "fits the grids" in report.reasons["pos_embed.weight"]
    assert torch.equal(model.pos_embed.weight, initial)
    assert torch.equal(model.blocks[1].attn.qkv.weight, joint_112.blocks[1].attn.qkv.weight)


@pytest.mark.parametrize("recorded", [True, False], ids=["our-checkpoint", "bare-state-dict"])
def test_a_joint_table_is_not_read_as_the_factorised_encoders_spatial_table(tmp_path, joint_112, recorded):
    # 1 + 4x7x7 = 197 tokens is also a class token and a 14x14 image.
    path = tmp_path / "joint.pt"
    torch.save(_ours(joint_112, "vivit_tiny") if recorded else joint_112.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"pos_embed.weight: .*covers space and time.*space only"):
        create_model("vivit_tiny_fe", pretrained=str(path))


@pytest.mark.parametrize("variant", ["vivit_tiny_fsa", "vivit_tiny_fdp"])
@pytest.mark.parametrize("recorded", [True, False], ids=["our-checkpoint", "bare-state-dict"])
def test_models_3_and_4_drop_the_class_token_row_of_a_model_1_table(tmp_path, joint_112, variant, recorded):
    path = tmp_path / "joint.pt"
    torch.save(_ours(joint_112, "vivit_tiny") if recorded else joint_112.state_dict(), path)
    model = create_model(variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Model 1's blocks have other keys than Models 3/4's
        load_pretrained(model, path, strict=False)
    torch.testing.assert_close(model.pos_embed.weight, joint_112.pos_embed.weight[:, 1:], rtol=0, atol=0)


def test_a_table_models_3_and_4_cannot_take_is_a_checkpoint_error_naming_file_and_key(tmp_path):
    state = create_model("vivit_tiny_fsa").state_dict()
    state["pos_embed.weight"] = torch.zeros(1, 1 + 2 * 5 * 5 + 3, 192)  # no grid, with or without a class row
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: pos_embed.weight: cannot tell the grid of a 54-token"):
        create_model("vivit_tiny_fsa", pretrained=str(path))


@pytest.mark.parametrize("inflation", ["central_frame", "filter_inflation"])
def test_an_image_vit_initialises_vivit_with_an_inflated_patch_filter_and_a_table_repeated_over_time(
    tmp_path, inflation
):
    # An image ViT in our names (TimeSformer with space-only attention has exactly a ViT's weights):
    # a (D, C, 16, 16) patch filter and a class token + 7x7 spatial table.
    torch.manual_seed(0)
    vit = create_model("timesformer_tiny_space_only")
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    model = create_model("vivit_tiny", inflation=inflation, pretrained=str(path))  # strict: every key fits
    expected = inflate_patch_weight(vit.patch_embed.proj.weight.detach(), 2, inflation)
    torch.testing.assert_close(model.patch_embed.proj.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.patch_embed.proj.bias, vit.patch_embed.proj.bias, rtol=0, atol=0)
    table = model.pos_embed.weight.detach()
    torch.testing.assert_close(table[:, :1], vit.pos_embed.weight[:, :1], rtol=0, atol=0)
    for t in range(4):
        torch.testing.assert_close(table[0, 1 + 49 * t : 1 + 49 * (t + 1)], vit.pos_embed.weight[0, 1:], rtol=0, atol=0)


def test_strict_false_warns_once_with_every_left_out_key_and_returns_them(tmp_path):
    torch.manual_seed(0)
    source = create_model("timesformer_tiny_space_only", num_classes=7)
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "vit.pt")
    model = create_model("timesformer_tiny", num_classes=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_pretrained(model, tmp_path / "vit.pt", strict=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{tmp_path / 'vit.pt'}: spatiotemporal checkpoint does not fit timesformer; ")
    # The time table and 8 temporal tensors in each of 4 blocks: 33, the first 20 listed.
    assert "missing keys: blocks.0.temporal_attn.proj.bias, " in message and ", ... (33 in all); " in message
    assert "; unexpected keys: extra.weight; shape mismatch keys: head.bias, head.weight" in message
    assert isinstance(report, LoadReport) and report == "spatiotemporal" and not report.complete
    temporal = {k for k in model.state_dict() if ".temporal_" in k or k == "time_embed.weight"}
    assert set(report.missing) == temporal and len(temporal) == 33 and report.unexpected == ("extra.weight",)
    assert report.mismatched == ("head.bias", "head.weight")
    assert torch.equal(model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)


def test_a_checkpoint_that_fits_reports_nothing_left_out(tmp_path):
    source = create_model("swin3d_tiny", num_classes=3)
    torch.save(source.state_dict(), tmp_path / "swin.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_pretrained(create_model("swin3d_tiny", num_classes=3), tmp_path / "swin.pt", strict=False)
    assert report.complete and (report.missing, report.unexpected, report.mismatched) == ((), (), ())


def test_mmaction2_1x_video_swin_names_its_final_norm_norm3(tmp_path):
    torch.manual_seed(0)
    source = create_model("swin3d_tiny", num_classes=5).eval()
    official = official_videoswin.from_ours(source.state_dict(), window_size=(4, 7, 7))
    # mmaction2 1.x: SwinTransformer3D(out_indices=(3,)) adds its output norm as `norm3`.
    official = {k.replace("backbone.norm.", "backbone.norm3."): v for k, v in official.items()}
    assert "backbone.norm3.weight" in official
    torch.save({"meta": {"mmaction_version": "1.2.0"}, "state_dict": official}, tmp_path / "swin_1x.pth")
    loaded = create_model("swin3d_tiny", num_classes=5)
    assert load_pretrained(loaded, tmp_path / "swin_1x.pth") == "videoswin"
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(clip), source(clip), rtol=0, atol=0)


def test_a_checkpoint_read_once_serves_the_metadata_and_the_weights(tmp_path, monkeypatch):
    import spatiotemporal.convert as convert

    model = create_model("timesformer_tiny", num_classes=3, num_frames=4, image_size=32, patch_size=8)
    torch.save(_ours(model, "timesformer_tiny", num_frames=4, image_size=32, patch_size=8), tmp_path / "m.pt")
    reads = []
    real = torch.load
    monkeypatch.setattr(convert.torch, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    checkpoint = read_checkpoint(tmp_path / "m.pt")
    loaded = create_model("timesformer_tiny", num_classes=3, pretrained=checkpoint)
    assert reads == [str(tmp_path / "m.pt")]
    assert torch.equal(loaded.head.weight, model.head.weight)
