"""What a training checkpoint holds, and how each Ray worker writes and reads its part.

Rank 0 writes everything: model, optimizer, schedule, EMA, step and data position, and the RNG
state of every rank (gathered first), because dropout and drop-path draw from per-rank generators.
Only rank 0 hands Ray Train a checkpoint, so no two workers ever write the same directory.

Before any worker starts, the driver picks the checkpoint a resumed run continues from (the newest
one that can be read) and checks that the run's config can continue it (`check_resumable`).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
POSITION_FILE = "position.json"  # read without loading the weights
MODEL_FILE = "model.pt"  # weights + how to build them, loadable with `create_model(..., pretrained=...)`


@dataclass
class Position:
    """Where training stands: optimizer steps taken, the next micro-batch of the current epoch, and
    the seconds spent training so far (over every attempt, so a resumed run's log keeps counting)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # dropout and drop path on a GPU draw from it
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(
    directory: Path, rng_states: list[dict], position: Position, model, optimizer, schedule, ema, config: dict,
    class_names: list[str] | None = None, windows: list[list[float]] | None = None, model_meta: dict | None = None,
) -> None:
    """`windows`: each rank's running sums for the next log row (loss sum, correct, count), so the
    first row after a resume averages the same steps as an uninterrupted run's. `model_meta`: what the
    task records for inference beside the weights (its `model_meta()`: a video run's clip geometry, a
    point run's voxel size)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "position": asdict(position),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "config": config,
            "rng": rng_states,
            "windows": windows,
        },
        directory / STATE_FILE,
    )
    (directory / POSITION_FILE).write_text(json.dumps(asdict(position)))
    # The model file says how to rebuild the network and what clips it takes, so inference needs
    # only its path.
    torch.save(
        {
            "model": (ema.module if ema is not None else model).state_dict(),
            "model_name": config["model"]["name"],
            "model_kwargs": dict(config["model"].get("kwargs") or {}),
            "class_names": list(class_names) if class_names is not None else None,
            **(model_meta or {}),
        },
        directory / MODEL_FILE,
    )


def _numpy_rng_globals() -> list:
    """What a checkpoint's numpy RNG state pickles as (an ndarray of uint32): the only globals
    torch's safe loader must be given for the training state this module writes."""
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state_file(path: Path, mmap: bool = False) -> dict:
    """A state.pt, through torch's safe loader (`weights_only=True`): a run directory is data, and
    a state.pt that someone else put there must not run code when it is read."""
    with torch.serialization.safe_globals(_numpy_rng_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load(directory: Path, rank: int, model, optimizer, schedule, ema) -> tuple[Position, list[float] | None]:
    """Restores a worker's state; returns the position and this rank's log window (None when the
    checkpoint predates saving it).

    The schedule and the optimizer's hyperparameters are the config's, not the checkpoint's: only
    the step count and the optimizer's running statistics carry over, so a resumed run with more
    epochs (or another lr) follows the new schedule from where it stopped, as mmaction's resume
    does. `check_resumable` refuses the changes that the saved state cannot follow.
    """
    state = load_state_file(directory / STATE_FILE)
    model.load_state_dict(state["model"])
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)
    schedule.step_count = state["schedule"]["step_count"]
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    if rank < len(state["rng"]):  # a rank the checkpoint did not have keeps its fresh seed
        set_rng_state(state["rng"][rank])
    windows = state.get("windows")
    window = list(windows[rank]) if windows is not None and rank < len(windows) else None
    return Position(**state["position"]), window


def step_of(directory: Path) -> int:
    return int(json.loads((directory / POSITION_FILE).read_text())["step"])


def _step_or_none(directory: Path) -> int | None:
    try:
        return step_of(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _checkpoints_newest_first(run_dir: Path) -> list[tuple[Path, int | None]]:
    """A run's checkpoint directories with their steps, most steps first; those whose position.json
    cannot be read (step None) last."""
    steps = {p: _step_or_none(p) for p in Path(run_dir).glob("checkpoint_*") if p.is_dir()}
    order = sorted(steps, key=lambda p: (-1 if steps[p] is None else steps[p], p.name), reverse=True)
    return [(p, steps[p]) for p in order]


def drop_unregistered(run_dir: Path, kept: set[str], restored_step: int) -> list[str]:
    """Deletes the checkpoints of `run_dir` that an attempt of this fit wrote but Ray Train never
    registered (a worker died before every rank reported them): those not in `kept` (the run's
    checkpoints when this fit started, and the one restored) past `restored_step`. Left behind,
    Ray Train's `num_to_keep` would never delete them, and a later `--resume`, which takes the
    newest, would continue from a step whose logged rows the restart had already cut. Returns the
    names deleted."""
    dropped = []
    for directory, step in _checkpoints_newest_first(run_dir):
        if directory.name not in kept and (step is None or step > restored_step):
            shutil.rmtree(directory, ignore_errors=True)
            dropped.append(directory.name)
    return dropped


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The Ray Train checkpoint directory of a run with the most steps taken."""
    return next((p for p, step in _checkpoints_newest_first(run_dir) if step is not None), None)


def read_state(directory: Path) -> dict:
    """A checkpoint's state.pt, memory-mapped (the weights stay on disk until touched; the workers
    load their own copy), checked to be a training state. An unreadable one (a copy cut short by a
    crash) is a CheckpointError naming it."""
    from spatiotemporal.io.errors import CheckpointError
    from spatiotemporal.io.torch_files import is_torch_file

    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if not is_torch_file(path):  # an empty or foreign file, which torch.load would misreport
        raise CheckpointError(path, "cannot be read (not a file torch.save wrote)")
    try:
        state = load_state_file(path, mmap=True)
    except Exception as error:  # torch reports a damaged file as whatever its zip or pickle reader hit
        text = str(error).strip()
        if "Weights only load failed" in text:  # torch's refusal: pages of advice, ANSI codes included
            raise CheckpointError(path, "holds objects other than tensors and plain values, which are not loaded") from None
        # torch's first sentence says what broke; the rest is advice (CheckpointError keeps it one line)
        reason = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
        raise CheckpointError(path, f"cannot be read ({reason})") from None
    keys = ("position", "model", "optimizer", "schedule", "config", "rng")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(path, f"not a training checkpoint (no {', '.join(missing)})")
    return state


def resume_point(run_dir: Path) -> tuple[Path, dict, list[str]] | None:
    """The newest checkpoint of a run that can be read, its state (see `read_state`), and one note
    for each newer checkpoint that could not be read and was passed over. None: no checkpoint."""
    from spatiotemporal.io.errors import CheckpointError

    # A checkpoint whose position.json cannot be read is tried last.
    found = [p for p, _ in _checkpoints_newest_first(run_dir)]
    unreadable = []
    for directory in found:
        try:
            state = read_state(directory)
        except CheckpointError as error:
            unreadable.append(str(error))
            continue
        return directory, state, [f"{error}; resuming from an earlier checkpoint" for error in unreadable]
    if found:
        raise CheckpointError(run_dir, f"none of its {len(found)} checkpoints can be read ({'; '.join(unreadable)})")
    return None


# Settings the saved state is tied to: the data position counts micro-batches of this size on this
# many workers in this seed's order, and the optimizer's state belongs to these parameter groups.
FIXED_ON_RESUME = (
    "task", "seed", "data.batch_size", "ray.num_workers", "train.accum_steps",
    "optim.name", "optim.layer_decay", "optim.lr_scales",
)  # fmt: skip
# Settings a resumed run takes from its config: the schedule is rebuilt at the restored step.
FOLLOWED_ON_RESUME = (
    "schedule.epochs", "schedule.warmup_epochs", "schedule.min_lr",
    "optim.lr", "optim.weight_decay", "optim.momentum", "optim.betas",
)  # fmt: skip


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _describe_model(model: dict) -> str:
    args = [f"num_classes={model['num_classes']}"] if model.get("num_classes") else []
    args += [f"{k}={v!r}" for k, v in sorted((model.get("kwargs") or {}).items())]
    return f"{model['name']}({', '.join(args)})"


def _model_kwargs(model: dict) -> dict:
    """A config's model kwargs under their current names (a run saved with MViTv2's old `img_size`
    is the same model as one resumed with `image_size`)."""
    from spatiotemporal.models.registry import canonical_kwargs, get_spec

    kwargs = dict(model.get("kwargs") or {})
    try:
        return canonical_kwargs(get_spec(model["name"]), kwargs)
    except (KeyError, ValueError):  # an unknown model is reported by the name comparison
        return kwargs


def check_resumable(directory: Path, stored: dict, config: dict) -> list[str]:
    """Whether a run with `config` can continue from the checkpoint `directory`, whose state.pt
    holds the config `stored`. Raises ValueError naming the first setting it cannot follow; returns
    one note per setting that changes and is followed (the schedule's)."""
    old_model, new_model = stored["model"], config["model"]
    if (old_model["name"], old_model.get("num_classes"), _model_kwargs(old_model)) != (
        new_model["name"], new_model.get("num_classes"), _model_kwargs(new_model)
    ):
        raise ValueError(
            f"checkpoint {directory} holds model {_describe_model(old_model)}, "
            f"the config asks for {_describe_model(new_model)}; resume with the same model or start a new run"
        )
    for key in FIXED_ON_RESUME:
        old, new = _get(stored, key), _get(config, key)
        if old != new:
            raise ValueError(
                f"checkpoint {directory} was trained with {key}={old!r}, the config sets {new!r}: "
                f"a resumed run keeps it (start a new run to change it)"
            )
    return [
        f"{key} changes from {_get(stored, key)!r} to {_get(config, key)!r}; the resumed run follows the config"
        for key in FOLLOWED_ON_RESUME
        if _get(stored, key) != _get(config, key)
    ]
