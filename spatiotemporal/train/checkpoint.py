"""What a training checkpoint holds, and how each Ray worker writes and reads its part.

Rank 0 writes everything: model, optimizer, schedule, EMA, step and data position, and the RNG
state of every rank (gathered first), because dropout and drop-path draw from per-rank generators.
Only rank 0 hands Ray Train a checkpoint, so no two workers ever write the same directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
POSITION_FILE = "position.json"  # read without loading the weights
MODEL_FILE = "model.pt"  # weights + how to build them, loadable with `create_model(..., pretrained=...)`


@dataclass
class Position:
    """Where training stands: optimizer steps taken, and the next micro-batch of the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(
    directory: Path, rng_states: list[dict], position: Position, model, optimizer, schedule, ema, config: dict,
    class_names: list[str] | None = None,
) -> None:
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
        },
        directory / STATE_FILE,
    )
    (directory / POSITION_FILE).write_text(json.dumps(asdict(position)))
    # The model file says how to rebuild the network, so inference needs only its path.
    torch.save(
        {
            "model": (ema.module if ema is not None else model).state_dict(),
            "model_name": config["model"]["name"],
            "model_kwargs": dict(config["model"].get("kwargs") or {}),
            "class_names": list(class_names) if class_names is not None else None,
        },
        directory / MODEL_FILE,
    )


def load(directory: Path, rank: int, model, optimizer, schedule, ema) -> Position:
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    if rank < len(state["rng"]):  # a rank the checkpoint did not have keeps its fresh seed
        set_rng_state(state["rng"][rank])
    return Position(**state["position"])


def step_of(directory: Path) -> int:
    return int(json.loads((directory / POSITION_FILE).read_text())["step"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The Ray Train checkpoint directory of a run with the most steps taken."""
    found = [p.parent for p in run_dir.glob(f"checkpoint_*/{POSITION_FILE}")]
    return max(found, key=step_of) if found else None
