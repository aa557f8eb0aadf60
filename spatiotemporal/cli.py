"""The one entry point: `spatiotemporal <command> [<subcommand>] ...`.

Each command lives in its own module, which exposes `HELP` (one line), `add_arguments(parser)`
and `run(args) -> int`. Modules are imported only when their command is parsed, and they keep
heavy imports (torch, ray, open3d) inside `run`, so `--help` answers in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# "group sub" keys make nested subcommands; the value is the implementing module.
COMMANDS: dict[str, str] = {
    "probe": "spatiotemporal.commands.probe",
    "models": "spatiotemporal.commands.models",
    "weights": "spatiotemporal.commands.weights",
    "prepare synthetic-kinetics": "spatiotemporal.commands.prepare_synthetic_kinetics",
    "prepare kinetics": "spatiotemporal.commands.prepare_kinetics",
    "prepare synthetic-scannet": "spatiotemporal.commands.prepare_synthetic_scannet",
    "prepare scannet": "spatiotemporal.commands.prepare_scannet",
    "infer": "spatiotemporal.commands.infer",
    "train": "spatiotemporal.commands.train",
    "eval kinetics": "spatiotemporal.commands.eval_kinetics",
    "eval scannet": "spatiotemporal.commands.eval_scannet",
    "pipeline run": "spatiotemporal.commands.pipeline_run",
    "pipeline video-inference": "spatiotemporal.commands.pipeline_video_inference",
    "pipeline point-inference": "spatiotemporal.commands.pipeline_point_inference",
    "pipeline tokenize": "spatiotemporal.commands.pipeline_tokenize",
    "demo": "spatiotemporal.commands.demo",
}

GROUP_HELP = {
    "prepare": "write datasets: synthetic Kinetics/ScanNet, or re-encode/preprocess real ones",
    "eval": "evaluate with the papers' protocols (Kinetics multi-view, ScanNet official mIoU)",
    "pipeline": "Ray batch jobs: streaming, resumable, every input accounted for",
}


def _command_help(module_name: str) -> str:
    """The one-line help without importing the module (it may not exist yet in a partial tree)."""
    try:
        return importlib.import_module(module_name).HELP
    except ModuleNotFoundError:
        return "(not available in this build)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatiotemporal", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    # Only the command being run is imported fully; the rest contribute a help line.
    wanted = " ".join(a for a in argv[:2] if not a.startswith("-"))
    for key, module_name in COMMANDS.items():
        parts = key.split()
        if len(parts) == 2:
            group, name = parts
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group, ""))
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            holder = groups[group]
        else:
            holder, name = top, parts[0]
        selected = wanted == key or (len(parts) == 1 and argv[:1] == parts)
        if selected:
            module = importlib.import_module(module_name)
            sub = holder.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(sub)
            sub.set_defaults(_module=module)
        else:
            holder.add_parser(name, help=_command_help(module_name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        from spatiotemporal import __version__

        print(__version__)
        return 0
    module = getattr(args, "_module", None)
    if module is None:
        parser.parse_args(argv[:1] + ["--help"] if argv else ["--help"])
        return 2
    from spatiotemporal.cluster import ClusterJoinError

    try:
        return int(module.run(args) or 0)
    except ClusterJoinError as error:  # every command that joins Ray refuses a cluster alike
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
