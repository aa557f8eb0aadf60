"""The catalogue, walked offline: every entry names a registered model, a source, a protocol and a
published figure (or says why it has none), its class list fits the model's head, the torchvision
entries agree with torchvision's own weight enums, and the README's model zoo is the catalogue's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatiotemporal.models.registry import get_spec, list_models
from spatiotemporal.weights import CLASS_COUNTS, ENTRIES, get_entry

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_entry_names_a_model_a_source_a_protocol_and_a_figure(entry):
    assert entry.model in list_models() and entry.name.startswith(entry.model + ".")
    assert entry.source_page and entry.licence
    if entry.kind == "url":
        assert entry.url.startswith("https://")
    elif entry.kind == "hf":
        assert entry.hf_repo.count("/") == 1 and entry.hf_revision and entry.hf_files
    else:
        assert entry.kind == "unavailable" and entry.note.startswith("not downloadable")
    if entry.published is None:  # only where the entry says why
        assert not entry.confirmed and entry.note
    else:
        assert entry.published.protocol and entry.published.reference and 0 < entry.published.value < 100
    assert entry.confirmed or entry.note


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_class_list_matches_the_head_it_loads_into(entry):
    assert CLASS_COUNTS[entry.classes] == entry.num_classes
    family = get_spec(entry.model).family
    assert family == ("points" if entry.classes in ("scannet20", "s3dis13") else "video")
    if entry.classes.startswith("kinetics"):
        from spatiotemporal.meta import kinetics_class_names

        assert len(kinetics_class_names(entry.num_classes)) == entry.num_classes
    if family == "points":
        assert get_spec(entry.model).num_classes == entry.num_classes


def test_names_are_unique_and_a_tag_finds_its_entry():
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)
    assert get_entry("k400", model="mvitv2_s").name == "mvitv2_s.k400"


def test_the_torchvision_entries_are_torchvisions_own():
    from torchvision.models.video import (MViT_V2_S_Weights, Swin3D_B_Weights, Swin3D_S_Weights,
                                          Swin3D_T_Weights)

    enums = {"mvitv2_s.k400": MViT_V2_S_Weights.KINETICS400_V1, "swin3d_t.k400": Swin3D_T_Weights.KINETICS400_V1,
             "swin3d_s.k400": Swin3D_S_Weights.KINETICS400_V1, "swin3d_b.k400": Swin3D_B_Weights.KINETICS400_V1,
             "swin3d_b.k400_in22k": Swin3D_B_Weights.KINETICS400_IMAGENET22K_V1}
    for name, weights in enums.items():
        entry = get_entry(name)
        assert entry.url == weights.url
        assert weights.url.rsplit("-", 1)[1].removesuffix(".pth") == entry.sha256  # torch.hub's prefix check
        assert entry.num_params == weights.meta["num_params"]
        assert entry.published.value == weights.meta["_metrics"]["Kinetics-400"]["acc@1"]
        assert entry.size_mib == weights.meta["_file_size"]
        from spatiotemporal.meta import kinetics_class_names

        assert len(weights.meta["categories"]) == len(kinetics_class_names(400)) == entry.num_classes


def test_the_readme_model_zoo_is_generated_from_the_catalogue():
    from spatiotemporal.commands.weights import markdown_table

    text = README.read_text()
    start = text.index("<!-- weights table: `spatiotemporal weights list --markdown` -->\n")
    table = text[start:].split("\n", 1)[1].split("\n\n", 1)[0]
    assert table == markdown_table()


def test_weights_list_json_says_which_entries_are_cached(tmp_path, monkeypatch, capsys):
    from spatiotemporal.cli import main
    from spatiotemporal.weights import manual_path

    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path))
    entry = get_entry("mvitv2_b.k400_slowfast")
    manual_path(entry).parent.mkdir(parents=True)
    manual_path(entry).write_bytes(b"copied by hand")
    assert main(["weights", "list", "--model", "mvitv2_b", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "mvitv2_b.k400_slowfast" and row["cached"] == str(manual_path(entry))
    assert row["params_m"] == 51.2 and row["published"]["value"] == 82.9
