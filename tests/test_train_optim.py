"""Training building blocks: configs and overrides, parameter groups, layer-wise decay, schedule,
EMA, the resumable sampler, activation checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spatiotemporal.models import create_model
from spatiotemporal.train.config import ConfigError, load_config, parse_views
from spatiotemporal.train.ema import ModelEma
from spatiotemporal.train.loop import enable_activation_checkpointing
from spatiotemporal.train.optim import CosineWarmupSchedule, build_optimizer, cosine_with_warmup, param_groups
from spatiotemporal.train.sampler import ResumableDistributedSampler


class TinyViT(nn.Module):
    def __init__(self, depth: int = 3, dim: int = 8):
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x).mean(1))


def test_overrides_are_typed_and_unknown_keys_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: timesformer_tiny}\noptim: {lr: 0.1}\n")
    config = load_config(path, ["optim.lr=3e-4", "schedule.epochs=7", "model.kwargs.depth=2", "ray.use_gpu=true"])
    assert config["optim"]["lr"] == 3e-4 and config["schedule"]["epochs"] == 7
    assert config["model"]["kwargs"] == {"depth": 2} and config["ray"]["use_gpu"] is True
    assert config["optim"]["weight_decay"] == 0.05  # default kept
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(path, ["optim.lrr=1"])
    path.write_text("model: {name: timesformer_tiny}\noptimizer: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(path)


def test_views_parse_as_temporal_by_spatial():
    assert parse_views("4x3") == (4, 3) and parse_views(None) is None
    with pytest.raises(ValueError, match="4x3"):
        parse_views("four")


def test_norms_biases_and_position_tables_get_no_weight_decay():
    groups = param_groups(TinyViT(), weight_decay=0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert "pos_embed" in no_decay and "blocks.0.0.weight" in no_decay and "head.bias" in no_decay
    assert decay == {"patch_embed.weight", "blocks.0.1.weight", "blocks.1.1.weight", "blocks.2.1.weight", "head.weight"}


@pytest.mark.parametrize(("name", "tables"), [
    ("timesformer_tiny", {"cls_token", "pos_embed.weight", "time_embed.weight"}),
    ("vivit_tiny", {"cls_token", "pos_embed.weight"}),
    ("vivit_tiny_fe", {"cls_token", "pos_embed.weight", "temporal_cls_token", "temporal_pos_embed.weight"}),
    ("mvitv2_tiny", {"cls_token"} | {f"blocks.{i}.attn.rel_pos_{a}" for i in range(5) for a in "thw"}),
    ("swin3d_tiny", {f"stages.{s}.blocks.{b}.attn.relative_position_bias_table" for s in range(4) for b in range(2)}),
])  # fmt: skip
def test_the_video_models_position_tables_are_exempt_from_weight_decay_as_in_the_official_recipes(name, tables):
    groups = param_groups(create_model(name), weight_decay=0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert tables <= no_decay


def test_layer_wise_decay_scales_lr_by_depth():
    groups = param_groups(TinyViT(depth=3), weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    # 3 blocks: embeddings are layer 0 (0.5^4), block i is layer i+1, the head layer 4 (scale 1).
    assert scale["patch_embed.weight"] == 0.5**4 and scale["pos_embed"] == 0.5**4
    assert scale["blocks.0.1.weight"] == 0.5**3 and scale["blocks.2.1.weight"] == 0.5**1
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 1.0


def test_layer_wise_decay_numbers_video_swin_blocks_across_stages():
    """swin3d_tiny has 2-2-2-2 blocks: as the Swin fine-tuning recipes (SimMIM) count them, block j of
    stage i is layer 2i + j + 1, a stage's patch merging goes with its last block, the embedding is
    layer 0 and the final norm and head layer 9."""
    groups = param_groups(create_model("swin3d_tiny"), weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["patch_embed.proj.weight"] == 0.5**9
    assert scale["stages.0.blocks.0.attn.qkv.weight"] == 0.5**8
    assert scale["stages.0.blocks.1.attn.qkv.weight"] == 0.5**7
    assert scale["stages.0.downsample.reduction.weight"] == 0.5**7
    assert scale["stages.1.blocks.0.mlp.fc1.weight"] == 0.5**6
    assert scale["stages.1.blocks.1.mlp.fc1.weight"] == 0.5**5
    assert scale["stages.2.blocks.0.norm1.weight"] == 0.5**4
    assert scale["stages.2.downsample.norm.bias"] == 0.5**3
    assert scale["stages.3.blocks.0.attn.proj.weight"] == 0.5**2
    assert scale["stages.3.blocks.1.attn.proj.weight"] == 0.5**1
    assert scale["norm.weight"] == scale["head.weight"] == 1.0


def test_layer_wise_decay_puts_the_vivit_factorised_encoders_temporal_blocks_above_its_spatial_ones():
    groups = param_groups(create_model("vivit_tiny_fe"), weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    # 4 spatial + 2 temporal blocks: layers 1-4 and 5-6; tokens and position tables are layer 0.
    assert scale["temporal_cls_token"] == scale["temporal_pos_embed.weight"] == scale["cls_token"] == 0.5**7
    assert scale["blocks.0.attn.qkv.weight"] == 0.5**6 and scale["blocks.3.attn.qkv.weight"] == 0.5**3
    assert scale["temporal_blocks.0.attn.qkv.weight"] == 0.5**2 and scale["temporal_blocks.1.attn.qkv.weight"] == 0.5
    assert scale["head.weight"] == 1.0


def test_lr_scales_multiply_the_lr_of_parameters_under_a_named_component():
    """The Stratified Transformer's recipe: everything under `blocks` at 0.1x the base lr."""
    model = create_model("stratified_transformer_tiny")
    groups = param_groups(model, weight_decay=0.05, lr_scales={"blocks": 0.1})
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["stages.1.blocks.0.attn.qkv.weight"] == 0.1 and scale["stages.3.blocks.1.norm2.bias"] == 0.1
    assert scale["stem.0.conv.weight"] == 1.0 and scale["downs.0.linear.weight"] == 1.0 and scale["classifier.3.weight"] == 1.0
    # The scale splits groups without merging decay and no-decay parameters.
    assert all(len({scale[n] for n in g["names"]}) == 1 for g in groups)


def test_cosine_schedule_warms_up_linearly_then_decays_to_min():
    assert cosine_with_warmup(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_schedule_applies_group_scales_and_round_trips_its_state():
    model = TinyViT()
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 1.0, "weight_decay": 0.0, "momentum": 0.9, "layer_decay": 0.5})
    schedule = CosineWarmupSchedule(optimizer, total_steps=10, warmup_steps=0, base_lr=1.0, min_lr=0.0)
    for _ in range(5):
        schedule.step()
    lr = schedule.apply()
    assert lr == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sorted({g["lr"] / lr for g in optimizer.param_groups}) == pytest.approx([0.5**4, 0.5**3, 0.5**2, 0.5, 1.0])
    other = CosineWarmupSchedule(optimizer, 1, 1, 9.0, 9.0)
    other.load_state_dict(schedule.state_dict())
    assert other.apply() == lr


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(TinyViT(), {"name": "lamb", "lr": 1.0, "weight_decay": 0.0})


def test_ema_follows_weights_at_its_decay():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.1))


def test_sampler_splits_an_epoch_across_ranks_without_repeats():
    shards = [list(ResumableDistributedSampler(10, rank, 2, batch_size=2, seed=0)) for rank in range(2)]
    indices = [i for shard in shards for _, i in shard]
    assert len(indices) == 8 and len(set(indices)) == 8  # 10 // (2 * 2) = 2 batches per rank


def test_sampler_order_depends_on_epoch_and_resumes_mid_epoch():
    sampler = ResumableDistributedSampler(20, 0, 2, batch_size=2, seed=3)
    sampler.set_position(epoch=1)
    full = list(sampler)
    sampler.set_position(epoch=1, skip_batches=2)
    assert list(sampler) == full[4:] and len(sampler) == len(full) - 4
    sampler.set_position(epoch=2)
    assert list(sampler) != full


def test_activation_checkpointing_keeps_gradients_exact():
    torch.manual_seed(0)
    plain = TinyViT()
    checkpointed = TinyViT()
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 3
    x = torch.randn(4, 2, 4)
    plain(x).sum().backward()
    checkpointed(x).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
