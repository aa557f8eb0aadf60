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
    import sys
    from pathlib import Path

    from spatiotemporal.cluster import ClusterJoinError, cluster_to_join
    from spatiotemporal.io.errors import InputError
    from spatiotemporal.train.config import check_data_root, load_config

    # Config, data root, run directory, checkpoint and cluster are checked before any worker starts;
    # each mistake is one line (a config error names its file or override and the setting).
    try:
        # The cluster to join (--address, else the config's ray.address, else RAY_ADDRESS) is
        # checked first, before the config's model registry and Ray Train load torch (seconds on
        # a busy machine); `fit` does not ask it again.
        cluster_to_join(args.address or configured_address(args.config, args.overrides))
        config = load_config(args.config, args.overrides)
        check_data_root(config, args.config)
        from spatiotemporal.train.loop import fit

        final = fit(config, resume=args.resume, address=args.address)
    except ClusterJoinError as error:  # as every entry point reports a cluster it cannot join
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, InputError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}")
        return 2
    run_dir = Path(config["output_dir"]) / config["name"]
    print(json.dumps(final, indent=2))
    for report in ("eval_kinetics.md", "eval_scannet.md"):
        if (run_dir / report).exists():
            print((run_dir / report).read_text())
    print(f"run directory: {run_dir} (metrics.jsonl, tensorboard/, curves.png, checkpoints)")
    return 0


def configured_address(config_path: str, overrides: list[str]) -> str | None:
    """The config's ray.address (its file, then the overrides), read without loading the config:
    `load_config` imports the model registry, and torch with it. A config that cannot be read
    names no cluster here; `load_config` reports what is wrong with it."""
    from spatiotemporal.train.config import parse_override, read_config_file

    try:
        settings = read_config_file(config_path)
        address = (settings.get("ray") or {}).get("address") if isinstance(settings, dict) else None
        for text in overrides:
            keys, value = parse_override(text)
            if keys == ["ray", "address"]:
                address = value
            elif keys == ["ray"] and isinstance(value, dict) and "address" in value:
                address = value["address"]
    except (ValueError, FileNotFoundError, AttributeError):
        return None
    return address if isinstance(address, str) else None
