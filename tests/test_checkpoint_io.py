"""Reading checkpoints: wrappers and DDP prefixes are unwrapped; unreadable files name the path."""

import pytest
import torch

from spatiotemporal.convert import read_state_dict
from spatiotemporal.io.errors import CheckpointError


def test_official_wrapper_and_ddp_prefix_are_unwrapped(tmp_path):
    weights = {"module.head.weight": torch.ones(2, 3), "module.head.bias": torch.zeros(2)}
    path = tmp_path / "ckpt.pyth"
    torch.save({"model_state": weights, "epoch": 3}, path)
    state = read_state_dict(path)
    assert sorted(state) == ["head.bias", "head.weight"]
    assert torch.equal(state["head.weight"], torch.ones(2, 3))


def test_safetensors_are_read(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0)}, str(path))
    assert torch.equal(read_state_dict(path)["a"], torch.arange(4.0))


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: no such file"):
        read_state_dict(tmp_path / "nope.pth")


def test_garbage_checkpoint_names_the_path_and_reason(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot read checkpoint"):
        read_state_dict(path)


def test_a_dict_without_tensors_is_rejected_with_its_keys(tmp_path):
    path = tmp_path / "meta_only.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        read_state_dict(path)


def test_our_training_checkpoint_rebuilds_its_model_from_the_path_alone(tmp_path):
    from spatiotemporal.models import create_model

    trained = create_model("timesformer_tiny", num_classes=4, image_size=32, patch_size=8)
    path = tmp_path / "model.pt"
    torch.save(
        {
            "model": trained.state_dict(),
            "model_name": "timesformer_tiny",
            "model_kwargs": {"image_size": 32, "patch_size": 8},
            "class_names": ["left", "right", "up", "down"],
        },
        path,
    )
    loaded = create_model("timesformer_tiny", pretrained=str(path)).eval()
    clip = torch.randn(1, 3, trained.spec.num_frames, 32, 32)
    assert torch.equal(loaded(clip), trained.eval()(clip))


def test_the_voxel_size_a_point_model_was_trained_at_is_read_from_its_checkpoint(tmp_path):
    from spatiotemporal.convert import read_checkpoint_meta

    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_name": "point_transformer_tiny", "grid_size": 0.05}, path)
    assert read_checkpoint_meta(path) == {"model_name": "point_transformer_tiny", "grid_size": 0.05}


def test_weights_load_as_read_even_if_the_file_is_rewritten_in_place_before_loading(tmp_path):
    """A checkpoint read for its weights is read whole: one copied over the same file before the
    model loads it (a user's script saving again) neither swaps the weights nor, truncated, kills
    the process with SIGBUS, as a memory-mapped read would."""
    from spatiotemporal.convert import read_checkpoint
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    first, second = create_model("vivit_tiny", num_classes=3), create_model("vivit_tiny", num_classes=3)
    path, other = tmp_path / "model.pth", tmp_path / "other.pth"
    torch.save({"model": first.state_dict(), "num_classes": 3}, path)
    torch.save({"model": second.state_dict(), "num_classes": 3}, other)
    checkpoint = read_checkpoint(path)
    with open(path, "r+b") as file:  # rewritten in place: same inode, as `cp` or `torch.save` would
        file.write(other.read_bytes())
    loaded = create_model("vivit_tiny", pretrained=checkpoint)
    for key, value in first.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
