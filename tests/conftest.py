"""Shared fixtures: the real samples in ../shared/data and small data the project generates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """The suite's own cache root (weights, precision probe timings): a run neither reads what
    the user's earlier runs measured nor leaves files in their cache. Subprocesses and Ray workers
    the tests start inherit it; tests that need another root set their own."""
    previous = os.environ.get("SPATIOTEMPORAL_CACHE")
    os.environ["SPATIOTEMPORAL_CACHE"] = str(tmp_path_factory.mktemp("spatiotemporal_cache"))
    yield
    if previous is None:
        os.environ.pop("SPATIOTEMPORAL_CACHE", None)
    else:
        os.environ["SPATIOTEMPORAL_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared samples are missing: expected them at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def video_dir(shared_data: Path) -> Path:
    return shared_data / "video"


@pytest.fixture(scope="session")
def points_dir(shared_data: Path) -> Path:
    return shared_data / "points"


@pytest.fixture(scope="session")
def tiny_kinetics(tmp_path_factory) -> Path:
    """Synthetic Kinetics small enough for a training run of a few seconds: 2 classes, 32 px."""
    from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics

    root = tmp_path_factory.mktemp("synthetic_kinetics")
    generate_synthetic_kinetics(root, SyntheticKineticsConfig(classes=2, videos_per_class=8, frames=8, size=32), progress=False)
    return root


@pytest.fixture(scope="session")
def pytorchvideo_functional():
    """pytorchvideo's tensor transforms, the reference for SlowFast-style geometry.

    pytorchvideo imports `torchvision.transforms.functional_tensor`, which torchvision renamed to
    `_functional_tensor`; the alias is installed here, once, before the import.
    """
    import sys

    import torchvision.transforms._functional_tensor as functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    import pytorchvideo.transforms.functional as functional

    return functional


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray for a test module's jobs (two CPUs, as CI has)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 << 20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def train_ray_cluster():
    """The local Ray that `fit` would start itself (two CPUs, Train's runtime env), shared by a
    test module's training runs."""
    import ray

    from spatiotemporal.train.ray_env import train_runtime_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env=train_runtime_env(local_without_dashboard=True))  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture()
def misfitting_checkpoint(tmp_path: Path) -> Path:
    """A vivit_tiny checkpoint that reads fine on the driver but whose 3-wide head does not fit
    the 7 classes it records, so building the model fails only in a job's workers."""
    import torch

    from spatiotemporal.models import create_model

    state = create_model("vivit_tiny", num_classes=7).state_dict()
    state["head.weight"] = torch.zeros(3, state["head.weight"].shape[1])
    state["head.bias"] = torch.zeros(3)
    path = tmp_path / "misfit.pth"
    torch.save({"model": state, "num_classes": 7}, path)
    return path


@pytest.fixture(scope="session")
def two_checkpoints(tmp_path_factory, tiny_kinetics) -> tuple[Path, Path]:
    """Two model files of one tiny TimeSformer for tiny_kinetics's clips, as training writes them,
    with different weights."""
    import torch

    from spatiotemporal.data.kinetics import read_kinetics_csv
    from spatiotemporal.models import create_model

    model_name = "timesformer_tiny"
    kwargs = {"num_frames": 4, "image_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    classes = sorted({r.label for r in read_kinetics_csv(tiny_kinetics / "train.csv", tiny_kinetics)})
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model(model_name, num_classes=len(classes), **kwargs)
        path = folder / f"seed{seed}" / "model.pt"
        path.parent.mkdir()
        torch.save({"model": model.state_dict(), "model_name": model_name, "model_kwargs": kwargs, "class_names": classes,
                    "clip": {"num_frames": 4, "frame_stride": 1, "crop_size": 32, "short_side": 32}}, path)  # fmt: skip
        paths.append(path)
    return paths[0], paths[1]
