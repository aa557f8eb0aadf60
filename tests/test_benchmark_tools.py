"""The benchmark runner's bookkeeping: FLOP counts, roofline ceilings, and sections kept per machine."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.measure import forward_flops, roofline_table
from benchmarks.run import machine_key, replace_section


def test_forward_flops_counts_a_matmul_as_two_flops_per_multiply_add():
    layer = torch.nn.Linear(8, 4)
    assert forward_flops(lambda: layer(torch.randn(3, 8))) == 2 * 3 * 8 * 4


def test_forward_flops_counts_attention_on_the_cpu_kernel_too():
    # torch's counter knows the GPU attention kernels only; (B=1, heads=2, N=16, d=8): QK^T and PV.
    q = torch.randn(1, 2, 16, 8)
    assert forward_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * 1 * 2 * 16 * 16 * 8)


def test_roofline_ceilings_are_the_gemm_rates_over_the_references_rate():
    # 100 GFLOP a clip in 1 s (reference), 0.5 s (ours fp32), 0.25 s (ours bf16); GEMMs at 150 / 400.
    lines = roofline_table([("m", 1, 100e9, 1.0, 0.5, 0.25)], "ref", fp32_rate=150e9, bf16_rate=400e9)
    assert lines[-1] == "| m | 1 | 100.0 | 100 | 200 | 400 | 1.50x | 4.00x |"


def test_roofline_shows_a_dash_where_bf16_was_not_measured():
    lines = roofline_table([("m", 4, 100e9, 1.0, 0.5, None)], "ref", fp32_rate=150e9, bf16_rate=400e9)
    assert lines[-1] == "| m | 4 | 100.0 | 100 | 200 | - | 1.50x | 4.00x |"


@pytest.mark.parametrize(
    "kind, key",
    [("Intel(R) Xeon(R) Processor, AMX", "intel-xeon-processor-amx"), ("AMD EPYC, AVX512-BF16", "amd-epyc-avx512-bf16")],
)
def test_machine_keys_are_marker_safe_slugs_of_the_cpu_kind(kind, key):
    assert machine_key(kind) == key


DOCUMENT = "# B\n\n<!-- section:decode@xeon -->\nold xeon\n<!-- /section:decode@xeon -->\n\n<!-- section:points@xeon -->\np\n<!-- /section:points@xeon -->\n"


def test_a_section_is_replaced_in_place_on_the_same_machine():
    out = replace_section(DOCUMENT, "decode@xeon", "new xeon")
    assert out == DOCUMENT.replace("old xeon", "new xeon")


def test_another_machines_section_goes_after_the_same_benchmark_and_keeps_it():
    out = replace_section(DOCUMENT, "decode@epyc", "epyc")
    assert "old xeon" in out
    assert out.index("/section:decode@xeon") < out.index("section:decode@epyc -->") < out.index("section:points@xeon")


def test_a_new_benchmark_is_appended():
    out = replace_section(DOCUMENT, "pipeline@epyc", "pipe")
    assert out.endswith("<!-- section:pipeline@epyc -->\npipe\n<!-- /section:pipeline@epyc -->\n")
