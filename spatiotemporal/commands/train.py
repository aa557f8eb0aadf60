"""`spatiotemporal train CONFIG.yaml [dotted.key=value ...]`: train on Ray Train."""

from __future__ import annotations

import argparse

HELP = "train a model on Ray Train (DDP over gloo on CPU, NCCL on GPU) from a YAML config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=3e-4 ray.num_workers=4")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir/name from its latest checkpoint")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from spatiotemporal.cluster import ClusterJoinError, cluster_to_join
    from spatiotemporal.io.errors import InputError
    from spatiotemporal.train.failures import TrainingStopped
    from spatiotemporal.train.skipped import SKIPPED_FILE, read_skipped
    from spatiotemporal.train.config import check_data_root, load_config, merged_config

    # Config, data root, run directory, checkpoint and cluster are checked before any worker starts;
    # each mistake is one line (a config error names its file or override and the setting).
    try:
        # The cluster to join (--address, else the config's ray.address, else RAY_ADDRESS) is
        # checked first, from the settings alone: the model registry and Ray Train load torch
        # (seconds on a busy machine).
        cluster_to_join(args.address or merged_config(args.config, args.overrides)["ray"]["address"])
        config = load_config(args.config, args.overrides)
        check_data_root(config, args.config)
        from spatiotemporal.train.loop import fit

        final = fit(config, resume=args.resume, address=args.address)
    except ClusterJoinError:
        raise  # a ValueError, but reported by cli.main as every command's (stderr)
    except (ValueError, InputError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}")
        return 2
    except TrainingStopped as error:  # the workers failed with no restarts left (train.max_failures)
        print(f"error: {error}")
        return 1
    run_dir = Path(config["output_dir"]) / config["name"]
    print(json.dumps(final, indent=2))
    for report in ("eval_kinetics.md", "eval_scannet.md"):
        if (run_dir / report).exists():
            print((run_dir / report).read_text())
    skipped = read_skipped(run_dir)
    if skipped:
        print(f"{len(skipped)} broken training videos were skipped, each replaced by another: {run_dir / SKIPPED_FILE}")
    print(f"run directory: {run_dir} (metrics.jsonl, tensorboard/, curves.png, checkpoints)")
    return 0

