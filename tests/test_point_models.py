"""Point Transformer and Stratified Transformer: registry, exact attention maths, and the
symmetries each architecture has (permutation equivariance, translation invariance)."""

from __future__ import annotations

import pytest
import torch

from spatiotemporal.data.point_transforms import point_features
from spatiotemporal.layers.point_attention import (
    PointVectorAttention,
    StratifiedWindowAttention,
    plan_windows,
)
from spatiotemporal.layers.point_ops import farthest_point_sampling, knn_query
from spatiotemporal.models import count_parameters, create_model, get_spec, list_models
from spatiotemporal.models.registry import point_feature_keys

TINY = ["point_transformer_tiny", "stratified_transformer_tiny"]


def room(n_floor: int = 400, n_wall: int = 250, n_box: int = 150, seed: int = 0):
    """A floor, a wall and a box, sampled at roughly 4-5 cm like a grid-sampled scan."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.rand(n_floor, 3, generator=g) * torch.tensor([1.6, 1.6, 0.0])
    wall = torch.rand(n_wall, 3, generator=g) * torch.tensor([0.0, 1.6, 1.0])
    box = torch.rand(n_box, 3, generator=g) * 0.5 + torch.tensor([0.6, 0.6, 0.0])
    coord = torch.cat([floor, wall, box]) + torch.randn(n_floor + n_wall + n_box, 3, generator=g) * 0.003
    color = torch.rand(len(coord), 3, generator=g)
    normal = torch.nn.functional.normalize(torch.randn(len(coord), 3, generator=g), dim=1)
    return coord, color, normal


def features(model, coord, color, normal):
    """The model's own inputs (PT: color + normal, ST: coord + color), as training builds them."""
    return point_features({"coord": coord, "color": color, "normal": normal}, point_feature_keys(model))


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


def test_all_four_models_are_registered_as_point_models():
    assert set(list_models("points")) >= {
        "point_transformer", "point_transformer_tiny", "stratified_transformer", "stratified_transformer_tiny",
    }
    assert create_model("point_transformer_tiny").arch == "point_transformer"
    assert create_model("stratified_transformer_tiny").arch == "stratified_transformer"


def test_scannet_configs_have_the_published_sizes():
    pt = count_parameters(create_model("point_transformer"))
    assert abs(pt / 1e6 - get_spec("point_transformer").published_params_m) < 0.05  # 7.77M vs 7.8M
    st = count_parameters(create_model("stratified_transformer"))
    assert round(st / 1e6, 1) == 18.8  # the 5-stage ScanNet config; no count is published for it


def test_stratified_s3dis_config_has_the_papers_8_0m_parameters():
    spec = get_spec("stratified_transformer_s3dis")
    st = count_parameters(create_model("stratified_transformer_s3dis"))
    assert spec.published_params_m == 8.0
    assert abs(st / 1e6 - 8.0) / 8.0 < 0.005  # 8.023M


def test_stratified_stem_transformer_attends_at_full_resolution_before_the_first_transition_down():
    """The reference's `stem_transformer`: one KPConv block, then depths[0] attention blocks on every
    input point. Without it (the ScanNet config) the stem is KPConv + residual KPConv block and the
    full-resolution level has no attention, whatever depths[0] says."""
    kwargs = dict(channels=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2), grid_size=0.04,
                  window_size=(0.2, 0.4, 0.8, 1.6), quant_size=(0.02, 0.04, 0.08, 0.16))
    with_stage = create_model("stratified_transformer", stem_transformer=True, **kwargs)
    kpconv_only = create_model("stratified_transformer", stem_transformer=False, **kwargs)
    assert (len(with_stage.stem), len(with_stage.stages[0].blocks)) == (1, 2)
    assert (len(kpconv_only.stem), len(kpconv_only.stages[0].blocks)) == (2, 0)
    assert [len(s.blocks) for s in with_stage.stages[1:]] == [len(s.blocks) for s in kpconv_only.stages[1:]] == [2, 2, 2]
    coord, color, normal = room()
    with torch.no_grad():
        out = with_stage.eval()(coord, torch.cat([coord, color], 1), torch.tensor([len(coord)]))
    assert out.shape == (len(coord), 20) and torch.isfinite(out).all()


def test_stratified_drop_path_rates_span_every_depth_as_the_reference():
    """The reference spreads rates over sum(depths), the unused first depth included: the ScanNet
    config's first attention block drops with 0.3 * 3/20 and its last with 0.3."""
    model = create_model("stratified_transformer")
    rates = [block.drop_path.p for stage in model.stages for block in stage.blocks]
    assert len(rates) == 18
    assert rates[0] == pytest.approx(0.3 * 3 / 20) and rates[-1] == pytest.approx(0.3)


@pytest.mark.parametrize("name", TINY)
def test_outputs_are_per_point_logits_and_equivariant_to_point_order(name):
    coord, color, normal = room()
    model = build(name)
    feat = features(model, coord, color, normal)
    offset = torch.tensor([450, len(coord)])
    with torch.no_grad():
        out = model(coord, feat, offset)
        # Permute within each cloud (clouds stay in their batch slots).
        perm = torch.cat([torch.randperm(450), 450 + torch.randperm(len(coord) - 450)])
        out_perm = model(coord[perm], feat[perm], offset)
    assert out.shape == (len(coord), 20)
    torch.testing.assert_close(out_perm, out[perm], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_outputs_are_invariant_to_translating_the_cloud(name):
    """PT: by design (relative positions only). ST: the windows, sampling and cRPE are invariant;
    its registered features include coordinates, so this checks it with color + normal input."""
    coord, color, normal = room(seed=1)
    feat = torch.cat([color, normal], 1)
    offset = torch.tensor([len(coord)])
    model = build(name)
    shift = torch.tensor([3.0, -2.0, 0.5])  # binary-exact, so window edges fall identically
    with torch.no_grad():
        a = model(coord, feat, offset)
        b = model(coord + shift, feat, offset)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("name", TINY)
def test_a_cloud_of_duplicated_points_is_segmented_like_any_other(name):
    """Scans repeat points (merged frames, quantised sensors); the downsampling levels must still
    hold the number of points their offsets promise. Cloud 0 is ten copies of one point."""
    coord = torch.cat([torch.full((10, 3), 0.5), room(seed=4)[0][:200]])
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(len(coord), 6, generator=g)
    model = build(name)
    with torch.no_grad():
        out = model(coord, feat, torch.tensor([10, len(coord)]))
        alone = model(coord[:10], feat[:10], torch.tensor([10]))
    assert out.shape == (210, 20) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:10], alone, atol=1e-4, rtol=1e-4)


def test_stratified_classifier_starts_from_the_references_init_unless_asked_for_pytorchs():
    torch.manual_seed(3)
    reference = create_model("stratified_transformer_tiny")
    torch.manual_seed(3)
    default_head = create_model("stratified_transformer_tiny", reference_classifier_init=False)
    ref_state, new_state = reference.state_dict(), default_head.state_dict()
    differing = sorted(k for k in ref_state if not torch.equal(ref_state[k], new_state[k]))
    # Only the classifier's two linear layers are drawn again (the batch norm between is untouched).
    assert differing == ["classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight"]
    # Reference: N(0, 0.02) weights, zero biases; PyTorch: Kaiming-uniform, bound 1 / sqrt(fan_in = 16).
    assert abs(float(ref_state["classifier.3.weight"].std()) - 0.02) < 0.004
    assert float(ref_state["classifier.3.bias"].abs().max()) == 0.0
    assert float(new_state["classifier.3.weight"].abs().max()) <= 0.25
    assert float(new_state["classifier.3.weight"].std()) > 0.1


@pytest.mark.parametrize("name", TINY)
def test_same_seed_gives_same_outputs_and_training_reaches_every_parameter(name):
    coord, color, normal = room(seed=2)
    feat = features(build(name), coord, color, normal)
    offset = torch.tensor([len(coord)])
    outputs = []
    for _ in range(2):
        model = build(name, seed=7).train()
        torch.manual_seed(11)  # drop-path draws from the global generator in training mode
        outputs.append(model(coord, feat, offset))
    out_a, out_b = outputs
    assert torch.equal(out_a, out_b)
    torch.nn.functional.cross_entropy(out_b, torch.randint(0, 20, (len(coord),))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", TINY)
def test_activation_checkpointing_gives_the_same_outputs_and_gradients(name):
    coord, color, normal = room(seed=3)
    offset = torch.tensor([len(coord)])
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(5)
        model = create_model(name, grad_checkpointing=checkpointed).train()
        torch.manual_seed(13)  # drop-path; checkpointing replays the same draws in backward
        out = model(coord, features(model, coord, color, normal), offset)
        torch.nn.functional.cross_entropy(out, torch.arange(len(coord)) % 20).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, atol=0, rtol=0)
    # Recomputation reorders float sums; biases feeding a BatchNorm have true gradients near zero,
    # so the gradients are compared as one vector, relative to its size.
    assert grads_a.keys() == grads_b.keys() and all(g is not None for g in grads_b.values())
    flat_a, flat_b = (torch.cat([g.flatten() for g in grads.values()]) for grads in (grads_a, grads_b))
    assert ((flat_b - flat_a).norm() / flat_a.norm()).item() < 1e-5


def test_activation_checkpointing_updates_point_transformer_batch_norm_statistics_once_per_step():
    coord, color, normal = room(seed=3)
    offset = torch.tensor([len(coord)])
    stats = []
    for checkpointed in (False, True):
        torch.manual_seed(5)
        model = create_model("point_transformer_tiny", grad_checkpointing=checkpointed).train()
        out = model(coord, features(model, coord, color, normal), offset)
        torch.nn.functional.cross_entropy(out, torch.arange(len(coord)) % 20).backward()
        stats.append({n: b.clone() for n, b in model.named_buffers()})
    plain, checkpointed = stats
    assert {int(v) for n, v in checkpointed.items() if n.endswith("num_batches_tracked")} == {1}
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=0, rtol=0, msg=name)


def test_vector_attention_matches_the_per_point_formula():
    torch.manual_seed(3)
    layer = PointVectorAttention(16, share_planes=4).eval()
    coord, x = torch.rand(60, 3), torch.randn(60, 16)
    nbrs, _ = knn_query(8, coord, torch.tensor([60]))
    out = layer(coord, x, nbrs)
    with torch.no_grad():
        q, k, v = layer.to_q(x), layer.to_k(x), layer.to_v(x)
        i = 17
        delta = layer.pos_mlp(coord[nbrs[i]] - coord[i])  # (8, 16)
        w = layer.weight_mlp(k[nbrs[i]] - q[i] + delta).softmax(0)  # (8, 4): one weight per group
        expected = ((v[nbrs[i]] + delta) * w.repeat(1, 4)).sum(0)  # channel c uses weight c % 4
    torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def stratified_reference(attn: StratifiedWindowAttention, coord, x, keys_of):
    """The paper's formula, one query at a time: softmax over its keys of
    scale * q.k + scale * q.r_q + k.r_k, applied to v + r_v."""
    n, h, d = len(x), attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(n, 3, h, d).unbind(1)
    out = torch.zeros(n, h, d)
    for i in range(n):
        j = keys_of[i]
        idx = attn._bin(coord[i] - coord[j])  # (K, 3)
        rq = sum(attn.table_q[idx[:, a], :, :, a] for a in range(3))  # (K, H, D)
        rk = sum(attn.table_k[idx[:, a], :, :, a] for a in range(3))
        rv = sum(attn.table_v[idx[:, a], :, :, a] for a in range(3))
        logits = attn.scale * (q[i] * k[j]).sum(-1) + attn.scale * (q[i] * rq).sum(-1) + (k[j] * rk).sum(-1)
        p = logits.softmax(0)  # (K, H)
        out[i] = (p[..., None] * (v[j] + rv)).sum(0)
    return attn.proj(out.reshape(n, h * d))


@pytest.mark.parametrize("shift", [False, True])
def test_stratified_keys_are_the_window_plus_sampled_points_of_the_double_window(shift):
    torch.manual_seed(4)
    coord = torch.rand(300, 3) * torch.tensor([0.9, 0.7, 0.3])
    offset = torch.tensor([300])
    w = 0.2
    sampled = farthest_point_sampling(coord, offset, torch.tensor([75]))
    plan = plan_windows(coord, offset, w, sampled, shift, max_elements=2000)
    lo = coord.min(0).values
    small = torch.floor((coord - lo + (w / 2 if shift else 0)) / w).long()
    large = torch.floor((coord - lo + (w if shift else 0)) / (2 * w)).long()
    is_sampled = torch.zeros(300, dtype=torch.bool)
    is_sampled[sampled] = True
    seen = torch.zeros(300, dtype=torch.long)
    for queries, q_mask, keys, k_mask in plan.chunks:
        for row in range(len(queries)):
            got = set(keys[row][k_mask[row]].tolist())
            for i in queries[row][q_mask[row]].tolist():
                seen[i] += 1
                same_small = (small == small[i]).all(1)
                same_large = (large == large[i]).all(1)
                expected = same_small | (same_large & is_sampled & ~same_small)
                assert got == set(expected.nonzero().squeeze(1).tolist())
    assert (seen == 1).all()  # every point is a query exactly once
    assert len(plan.chunks) > 1  # the element budget split the work


def test_kpconv_sums_each_neighbours_features_through_the_kernel_points_it_is_near():
    from spatiotemporal.models.stratified_transformer import KPConv

    torch.manual_seed(8)
    conv = KPConv(4, 5, sigma=0.05)
    coord = torch.rand(60, 3) * 0.3
    x = torch.randn(60, 4)
    neighbours, dist = knn_query(8, coord, torch.tensor([60]))
    valid = (dist <= 0.1).float()
    expected = torch.zeros(60, 5)
    for n in range(60):
        for m in range(8):
            if valid[n, m]:
                y = coord[neighbours[n, m]] - coord[n]
                for k, point in enumerate(conv.kernel):
                    h = max(0.0, 1 - float((y - point).norm()) / 0.05)
                    expected[n] += h * x[neighbours[n, m]] @ conv.weight[k]
    with torch.no_grad():
        got = conv(x, neighbours, conv.influence(coord, neighbours, valid))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_stratified_plan_chunks_pad_at_most_the_slack_over_their_planned_pairs():
    # Windows of very uneven occupancy: one dense corner, a sparse remainder.
    torch.manual_seed(6)
    coord = torch.cat([torch.rand(600, 3) * 0.15, torch.rand(400, 3) * torch.tensor([2.0, 2.0, 0.4])])
    offset = torch.tensor([1000])
    w, slack, floor = 0.2, 2.0, 256
    sampled = farthest_point_sampling(coord, offset, torch.tensor([250]))
    plan = plan_windows(coord, offset, w, sampled, shift=False, padding_slack=slack, min_elements=floor)
    lo = coord.min(0).values
    small = torch.floor((coord - lo) / w).long()
    large = torch.floor((coord - lo) / (2 * w)).long()
    is_sampled = torch.zeros(len(coord), dtype=torch.bool)
    is_sampled[sampled] = True
    for queries, q_mask, keys, _ in plan.chunks:
        # A group's planned keys: its window's points and every sampled point of its double window.
        first = queries[:, 0]
        planned_keys = torch.stack([
            (small == small[i]).all(1).sum() + ((large == large[i]).all(1) & is_sampled).sum() for i in first
        ])
        planned = int((q_mask.sum(1) * planned_keys).sum())
        padded = queries.numel() * keys.shape[1]
        assert len(queries) == 1 or padded <= max(floor, slack * planned), (padded, planned)
    one_chunk = plan_windows(coord, offset, w, sampled, False, max_elements=1 << 30, padding_slack=float("inf"))
    assert len(one_chunk.chunks) == 1 < len(plan.chunks)


def test_stratified_attention_is_the_same_however_the_plan_is_chunked():
    torch.manual_seed(7)
    attn = StratifiedWindowAttention(12, num_heads=3, window_size=0.2, quant_size=0.02).eval()
    coord = torch.cat([torch.rand(300, 3) * 0.15, torch.rand(200, 3) * torch.tensor([1.0, 1.0, 0.3])])
    x = torch.randn(500, 12)
    offset = torch.tensor([500])
    sampled = farthest_point_sampling(coord, offset, torch.tensor([125]))
    tight = plan_windows(coord, offset, 0.2, sampled, shift=True, padding_slack=1.2, min_elements=64)
    whole = plan_windows(coord, offset, 0.2, sampled, shift=True, padding_slack=float("inf"))
    assert len(whole.chunks) == 1 < len(tight.chunks)
    with torch.no_grad():
        torch.testing.assert_close(attn(coord, x, tight), attn(coord, x, whole), atol=1e-6, rtol=1e-5)


def test_stratified_attention_with_crpe_matches_the_per_query_formula():
    torch.manual_seed(5)
    attn = StratifiedWindowAttention(12, num_heads=3, window_size=0.2, quant_size=0.02).eval()
    coord = torch.rand(120, 3) * torch.tensor([0.6, 0.5, 0.2])
    x = torch.randn(120, 12)
    offset = torch.tensor([120])
    sampled = farthest_point_sampling(coord, offset, torch.tensor([30]))
    plan = plan_windows(coord, offset, 0.2, sampled, shift=True, max_elements=500)
    keys_of = {}
    for queries, q_mask, keys, k_mask in plan.chunks:
        for row in range(len(queries)):
            for i in queries[row][q_mask[row]].tolist():
                keys_of[i] = keys[row][k_mask[row]]
    with torch.no_grad():
        got = attn(coord, x, plan)
        expected = stratified_reference(attn, coord, x, keys_of)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
