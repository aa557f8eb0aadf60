"""`spatiotemporal eval scannet`: the official ScanNet semantic-label metric, on submission files
or on a model run at full resolution."""

from __future__ import annotations

import argparse

HELP = "ScanNet semantic mIoU with the official benchmark's semantics (submission files, or a model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", help="folder of <scene>.txt predictions (one nyu40 id per vertex)")
    parser.add_argument("--gt", help="folder of <scene>.txt ground truth or raw <scene>_vh_clean_2.labels.ply")
    parser.add_argument("--config", help="training YAML config, to evaluate a model instead")
    model_weights = parser.add_mutually_exclusive_group()  # as eval kinetics: one or the other
    model_weights.add_argument("--checkpoint", help="model weights for --config")
    model_weights.add_argument("--weights", metavar="NAME",
                              help="published weights from the catalogue for --config, instead of --checkpoint "
                                   "(`spatiotemporal weights list --model NAME`)")
    parser.add_argument("--data", help="preprocessed ScanNet folder (Pointcept layout) for --config")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", default=None, help="with a model: write submission files, report and PNG here")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--tta", action="store_true",
                        help="with a model: sum Pointcept's 13 test-time augmentations, as its published numbers do")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spatiotemporal.eval.scannet import evaluate_submission
    from spatiotemporal.io.errors import InputError

    try:
        if args.pred or args.gt:
            if not (args.pred and args.gt):
                print("error: --pred and --gt go together")
                return 2
            summary = evaluate_submission(args.pred, args.gt)
        elif args.config and (args.checkpoint or args.weights) and args.data:
            from spatiotemporal.train.config import load_config
            from spatiotemporal.train.tasks import PointsTask, evaluation_config, load_weights

            overrides = [f"data.root={args.data}", f"data.val_split={args.split}", f"eval.tta={str(args.tta).lower()}"]
            config = evaluation_config(load_config(args.config, overrides), args.weights)
            task = PointsTask(config)
            model = task.build_model()  # with --weights: the published weights, fetched into the cache once
            if args.checkpoint:
                load_weights(model, args.checkpoint)
            out = Path(args.out) if args.out else None
            summary = task.evaluate_summary(model, report_dir=out)
        else:
            print("error: give --pred and --gt, or --config, --checkpoint (or --weights) and --data")
            return 2
    except (InputError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    print(summary.to_markdown())
    if args.json:
        summary.to_json(args.json)
        print(f"wrote {args.json}")
    return 0
