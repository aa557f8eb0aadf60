"""The model table: sizes and compute per view agree with the papers' own figures."""

import pytest

from spatiotemporal.models.summary import describe_model

# Published GFLOPs per view (multiply-adds): MViTv2 paper Table 7 (Kinetics-400), Video Swin paper Table 1.
PUBLISHED_GFLOPS = {"mvitv2_s": 64.0, "swin3d_t": 88.0}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GFLOPS))
def test_gflops_per_view_match_the_paper(name):
    row = describe_model(name)
    assert row["gflops_per_view"] == pytest.approx(PUBLISHED_GFLOPS[name], rel=0.02)


def test_rows_carry_the_papers_test_protocol():
    row = describe_model("mvitv2_s", flops=False)
    assert (row["input"], row["test_views"]) == ("16x4 @224", "5x1")
    assert row["params_m"] == pytest.approx(34.5, rel=0.005)
