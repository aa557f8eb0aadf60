"""Parity with the reference implementations, the strongest evidence of correctness.

HF transformers' TimeSformer and ViViT are built with random weights from their config classes
(nothing is downloaded), their state dicts saved to a file and loaded through `pretrained=`; the same
random clip goes to both, each in its own layout ((B, T, C, H, W) for HF, (B, C, T, H, W) for ours).
Full-size models, at 4 frames of 64 px to keep the suite fast.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import (
    TimesformerConfig,
    TimesformerForVideoClassification,
    VivitConfig,
    VivitForVideoClassification,
)

from spatiotemporal.convert import load_pretrained
from spatiotemporal.io.errors import CheckpointError, InputError
from spatiotemporal.models import create_model
from spatiotemporal.tokens import interpolate_pos_embed

SMALL_INPUT = {"num_frames": 4, "image_size": 64}
TINY_HF = {"hidden_size": 192, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 768}


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def _hf_clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_timesformer(tmp_path_factory):
    torch.manual_seed(0)
    reference = TimesformerForVideoClassification(TimesformerConfig(num_labels=400, **SMALL_INPUT)).eval()
    # HF starts the time table at zero, which would hide a time embedding added to the wrong axis.
    with torch.no_grad():
        reference.timesformer.embeddings.time_embeddings.normal_(std=0.5)
    path = tmp_path_factory.mktemp("hf") / "timesformer.bin"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.fixture(scope="module")
def hf_vivit(tmp_path_factory):
    torch.manual_seed(0)
    reference = VivitForVideoClassification(VivitConfig(num_labels=400, **SMALL_INPUT)).eval()
    # HF starts the class token and position table at zero; make them count.
    with torch.no_grad():
        reference.vivit.embeddings.cls_token.normal_(std=0.02)
        reference.vivit.embeddings.position_embeddings.normal_(std=0.02)
    path = tmp_path_factory.mktemp("hf") / "vivit.safetensors"
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(path))
    return reference, path


def test_timesformer_base_matches_hf_timesformer_divided_attention(hf_timesformer):
    reference, path = hf_timesformer
    ours = create_model("timesformer_base", pretrained=str(path), **SMALL_INPUT).eval()
    clip = _hf_clip()
    with torch.no_grad():
        expected = reference(pixel_values=clip).logits
        got = ours(clip.transpose(1, 2))
    assert _relative_error(got, expected) <= 1e-4


def test_vivit_b_joint_matches_hf_vivit(hf_vivit):
    reference, path = hf_vivit
    ours = create_model("vivit_b_joint", pretrained=str(path), **SMALL_INPUT).eval()
    clip = _hf_clip(1)
    with torch.no_grad():
        expected = reference(pixel_values=clip).logits
        got = ours(clip.transpose(1, 2))
    assert _relative_error(got, expected) <= 1e-4


def test_timesformer_joint_space_time_matches_hf(tmp_path):
    torch.manual_seed(0)
    config = TimesformerConfig(num_labels=10, attention_type="joint_space_time", **TINY_HF, **SMALL_INPUT)
    reference = TimesformerForVideoClassification(config).eval()
    torch.save(reference.state_dict(), tmp_path / "joint.bin")
    ours = create_model(
        "timesformer_tiny_joint", num_classes=10, depth=2, pretrained=str(tmp_path / "joint.bin"), **SMALL_INPUT
    ).eval()
    clip = _hf_clip(2)
    with torch.no_grad():
        assert _relative_error(ours(clip.transpose(1, 2)), reference(pixel_values=clip).logits) <= 1e-4


def test_hf_vivit_checkpoints_with_transformers_4_key_names_load_too(tmp_path):
    torch.manual_seed(0)
    reference = VivitForVideoClassification(VivitConfig(num_labels=10, **TINY_HF, **SMALL_INPUT)).eval()
    with torch.no_grad():
        reference.vivit.embeddings.position_embeddings.normal_(std=0.02)
    legacy_names = [
        (r"vivit\.layers\.(\d+)\.attention\.q_proj", r"vivit.encoder.layer.\1.attention.attention.query"),
        (r"vivit\.layers\.(\d+)\.attention\.k_proj", r"vivit.encoder.layer.\1.attention.attention.key"),
        (r"vivit\.layers\.(\d+)\.attention\.v_proj", r"vivit.encoder.layer.\1.attention.attention.value"),
        (r"vivit\.layers\.(\d+)\.attention\.o_proj", r"vivit.encoder.layer.\1.attention.output.dense"),
        (r"vivit\.layers\.(\d+)\.mlp\.fc1", r"vivit.encoder.layer.\1.intermediate.dense"),
        (r"vivit\.layers\.(\d+)\.mlp\.fc2", r"vivit.encoder.layer.\1.output.dense"),
        (r"vivit\.layers\.(\d+)\.", r"vivit.encoder.layer.\1."),
    ]
    legacy = {}
    for key, value in reference.state_dict().items():
        for pattern, repl in legacy_names:
            key = re.sub(pattern, repl, key)
        legacy[key] = value
    torch.save(legacy, tmp_path / "legacy.bin")
    ours = create_model("vivit_tiny", num_classes=10, depth=2, num_heads=3, pretrained=str(tmp_path / "legacy.bin"),
                        **SMALL_INPUT).eval()
    clip = _hf_clip(3)
    with torch.no_grad():
        assert _relative_error(ours(clip.transpose(1, 2)), reference(pixel_values=clip).logits) <= 1e-4


def test_missing_and_unknown_keys_raise_a_checkpoint_error_that_names_them(hf_timesformer, tmp_path):
    reference, _ = hf_timesformer
    state = reference.state_dict()
    del state["timesformer.encoder.layer.3.temporal_dense.weight"]
    state["timesformer.encoder.layer.3.adapter.weight"] = torch.zeros(3)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with torch.device("meta"):
        model = create_model("timesformer_base", **SMALL_INPUT)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, path)
    message = str(info.value)
    assert isinstance(info.value, InputError) and str(path) in message
    assert "missing keys: blocks.3.temporal_fc.weight" in message
    assert "unexpected keys: timesformer.encoder.layer.3.adapter.weight" in message


def test_strict_false_loads_every_key_that_fits_and_leaves_the_rest(tmp_path):
    torch.manual_seed(0)
    reference = TimesformerForVideoClassification(TimesformerConfig(num_labels=10, **TINY_HF, **SMALL_INPUT))
    state = reference.state_dict()
    del state["classifier.weight"], state["classifier.bias"]
    torch.save(state, tmp_path / "headless.bin")
    fresh = create_model("timesformer_tiny", num_classes=10, depth=2, **SMALL_INPUT)
    head_before = fresh.head.weight.detach().clone()
    with pytest.raises(CheckpointError, match="missing keys: head.bias, head.weight"):
        create_model("timesformer_tiny", num_classes=10, depth=2, pretrained=str(tmp_path / "headless.bin"),
                     **SMALL_INPUT)
    layout = load_pretrained(fresh, tmp_path / "headless.bin", strict=False)
    assert layout == "hf-transformers"
    torch.testing.assert_close(fresh.blocks[1].temporal_fc.weight, state["timesformer.encoder.layer.1.temporal_dense.weight"])
    torch.testing.assert_close(fresh.head.weight, head_before)


def _to_official_timesformer_names(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys in facebookresearch/TimeSformer's layout: `TimeSformer.model` is a VisionTransformer with
    patch_embed.proj, cls_token, pos_embed, time_embed (bare parameters), blocks.N.{norm1, attn.qkv,
    attn.proj, temporal_norm1, temporal_attn.qkv, temporal_attn.proj, temporal_fc, norm2, mlp.fc1,
    mlp.fc2}, norm and head."""
    bare = {"pos_embed.weight": "pos_embed", "time_embed.weight": "time_embed"}
    return {"model." + bare.get(key, key): value for key, value in ours.items()}


def test_an_official_timesformer_pyth_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    source = create_model("timesformer_tiny", num_classes=10, **SMALL_INPUT).eval()
    official = _to_official_timesformer_names(source.state_dict())
    assert "model.blocks.0.temporal_attn.qkv.weight" in official and "model.time_embed" in official
    path = tmp_path / "TimeSformer_divST_8x32_224_K400.pyth"
    torch.save({"model_state": official, "optimizer_state": {}, "epoch": 15, "cfg": "..."}, path)
    loaded = create_model("timesformer_tiny", num_classes=10, pretrained=str(path), **SMALL_INPUT).eval()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), source(clip), rtol=0, atol=0)


def _pos_tables_drawn(reference: TimesformerForVideoClassification) -> TimesformerForVideoClassification:
    # Random, so that how a table is resized shows in the logits.
    with torch.no_grad():
        reference.timesformer.embeddings.time_embeddings.normal_(std=0.5)
        reference.timesformer.embeddings.position_embeddings.normal_(std=0.5)
    return reference.eval()


@pytest.mark.parametrize(
    "name, attention_type, frames",
    [("timesformer_tiny_joint", "joint_space_time", 8), ("timesformer_tiny", "divided_space_time", 4)],
)
def test_timesformer_resizes_its_tables_for_other_frames_and_sizes_as_hf_does(tmp_path, name, attention_type, frames):
    # HF (like the official vit.py) resizes both tables with 'nearest' when the input differs from
    # the config (4 frames of 64 px): 96 px for both, and 8 frames for joint attention only, because
    # HF's divided layers take the frame count from the config, not the input.
    torch.manual_seed(0)
    config = TimesformerConfig(num_labels=10, attention_type=attention_type, **TINY_HF, **SMALL_INPUT)
    reference = _pos_tables_drawn(TimesformerForVideoClassification(config))
    torch.save(reference.state_dict(), tmp_path / "hf.bin")
    ours = create_model(name, num_classes=10, depth=2, pretrained=str(tmp_path / "hf.bin"), **SMALL_INPUT).eval()
    clip = torch.randn(2, frames, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _relative_error(ours(clip.transpose(1, 2)), reference(pixel_values=clip).logits) <= 1e-4


def test_an_hf_vivit_saved_with_its_config_loads_its_table_from_the_grid_the_config_gives(tmp_path):
    # 8 frames of 112 px: a 1 + 4x7x7 table, which into a 224-px model would also fit 1 + 1x14x14.
    torch.manual_seed(0)
    reference = VivitForVideoClassification(VivitConfig(num_labels=10, num_frames=8, image_size=112, **TINY_HF))
    with torch.no_grad():
        reference.vivit.embeddings.position_embeddings.normal_(std=0.02)
    reference.save_pretrained(tmp_path / "vivit-tiny")
    weights = tmp_path / "vivit-tiny" / "model.safetensors"
    ours = create_model("vivit_tiny", num_classes=10, depth=2, num_heads=3, image_size=224, pretrained=str(weights))
    table = reference.vivit.embeddings.position_embeddings.detach()
    expected = interpolate_pos_embed(table, (4, 7, 7), (4, 14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.weight, expected, rtol=0, atol=0)
    # The same weights without their config.json: the loader will not guess.
    (tmp_path / "vivit-tiny" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"pos_embed.weight: .*1 \+ \(1, 14, 14\) and 1 \+ \(4, 7, 7\)"):
        create_model("vivit_tiny", num_classes=10, depth=2, num_heads=3, image_size=224, pretrained=str(weights))
