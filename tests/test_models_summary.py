"""The model table: sizes and compute per view agree with the papers' own figures."""

import math

import pytest

from spatiotemporal.models import get_spec
from spatiotemporal.models.mvitv2 import CONFIGS, block_settings
from spatiotemporal.models.summary import describe_model

# Published GFLOPs per view (multiply-adds): MViTv2 paper Table 7 (Kinetics-400), Video Swin paper Table 1.
PUBLISHED_GFLOPS = {"mvitv2_s": 64.0, "swin3d_t": 88.0}


def mvit_rel_pos_channel_gmacs(name: str) -> float:
    """What MViTv2's relative positions add when they ride as extra attention channels: one per key
    coordinate t', h', w', then zeros up to a width that is a multiple of 8, with the values padded
    to the same width. Every block multiplies 2 * heads * Nq * Nk * (that width - head_dim) more."""
    spec = get_spec(name)
    grid = (spec.num_frames // 2, spec.crop_size // 4, spec.crop_size // 4)  # after the 2x4x4-stride stem
    total = 0
    for block in block_settings(CONFIGS[name]):
        k_grid = tuple(math.ceil(n / s) for n, s in zip(grid, block.stride_kv))
        q_grid = tuple(math.ceil(n / s) for n, s in zip(grid, block.stride_q))
        n_q, n_k = math.prod(q_grid) + 1, math.prod(k_grid) + 1  # with the class token
        head_dim = block.dim_out // block.num_heads
        extra = math.ceil((head_dim + sum(k_grid)) / 8) * 8 - head_dim
        total += 2 * block.num_heads * n_q * n_k * extra
        grid = q_grid
    return total / 1e9


@pytest.mark.parametrize("name", sorted(PUBLISHED_GFLOPS))
def test_gflops_per_view_match_the_paper(name):
    row = describe_model(name)
    implementation_extra = mvit_rel_pos_channel_gmacs(name) if name.startswith("mvit") else 0.0
    assert row["gflops_per_view"] - implementation_extra == pytest.approx(PUBLISHED_GFLOPS[name], rel=0.02)


def test_mvit_relative_position_channels_add_4_7_billion_multiply_adds_to_mvitv2_s():
    assert mvit_rel_pos_channel_gmacs("mvitv2_s") == pytest.approx(4.71, abs=0.01)


def test_rows_carry_the_papers_test_protocol():
    row = describe_model("mvitv2_s", flops=False)
    assert (row["input"], row["test_views"]) == ("16x4 @224", "5x1")
    assert row["params_m"] == pytest.approx(34.5, rel=0.005)


REQUIRED_MODELS = {
    "timesformer_base", "timesformer_hr", "timesformer_large", "timesformer_tiny",
    "vivit_b_joint", "vivit_b_fe", "vivit_l_fe", "vivit_b_fsa", "vivit_b_fdp", "vivit_tiny",
    "mvitv2_s", "mvitv2_b", "mvitv2_tiny", "swin3d_t", "swin3d_s", "swin3d_b", "swin3d_tiny",
    "point_transformer", "point_transformer_tiny", "stratified_transformer", "stratified_transformer_tiny",
}  # fmt: skip


def test_models_command_lists_every_required_model_as_json(capsys):
    import json

    from spatiotemporal.cli import main

    assert main(["models", "--json", "--no-flops"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert REQUIRED_MODELS <= set(rows)
    # Video models must match their papers' tables; point models report theirs beside a source.
    for name in REQUIRED_MODELS:
        published = rows[name]["published_params_m"]
        if rows[name]["family"] == "points":
            assert not published or rows[name]["params_source"], name
        elif published:
            assert rows[name]["params_m"] == pytest.approx(published, rel=0.005), name
