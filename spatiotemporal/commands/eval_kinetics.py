"""`spatiotemporal eval kinetics`: multi-view Kinetics evaluation of a trained checkpoint."""

from __future__ import annotations

import argparse

HELP = "evaluate a video model on Kinetics-format data with its paper's multi-view protocol"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the training YAML config (model, preprocessing, protocol)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="model.pt / state.pt / a checkpoint directory, any supported layout")
    weights.add_argument("--weights", metavar="NAME",
                         help="published weights from the catalogue (`spatiotemporal weights list`), e.g. k400")
    parser.add_argument("--data", required=True, help="annotation CSV or list file, or a dataset directory")
    parser.add_argument("--views", default=None, help="temporal x spatial views, e.g. 4x3 (default: the model's protocol)")
    parser.add_argument("--aggregation", choices=("softmax", "logits"), default=None, help="default: the model's protocol")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", default=None, help="write the summary here (a confusion-matrix PNG goes beside it)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spatiotemporal.io.errors import InputError
    from spatiotemporal.train.config import load_config
    from spatiotemporal.train.tasks import VideoTask, evaluation_config, load_weights

    overrides = list(args.overrides) + [f"eval.batch_size={args.batch_size}"]
    if args.views:
        overrides.append(f"eval.views={args.views}")
    if args.aggregation:
        overrides.append(f"eval.aggregation={args.aggregation}")
    try:
        config = evaluation_config(load_config(args.config, overrides), args.weights)
        task = VideoTask(config)
        dataset = task.dataset_at(args.data, "test", config["data"]["val_split"])
        if args.weights and config["model"]["num_classes"] != len(dataset.classes):
            raise ValueError(f"{args.data}: has {len(dataset.classes)} classes, but the weights "
                             f"{config['model']['weights']} classify {config['model']['num_classes']}")
        config["model"]["num_classes"] = config["model"]["num_classes"] or len(dataset.classes)
        model = task.build_model()  # with --weights: the published weights, fetched into the cache once
        if args.checkpoint:
            load_weights(model, args.checkpoint)
        summary = task.evaluate_summary(model, data=args.data)
    except (InputError, KeyError, ValueError, FileNotFoundError) as error:  # WeightsError is a ValueError
        print(f"error: {error}")
        return 2
    print(summary.to_markdown())
    if args.json:
        summary.to_json(args.json)
        png = summary.plot_confusion(Path(args.json).with_suffix(".confusion.png"))
        print(f"wrote {args.json}" + (f" and {png}" if png else ""))
    return 0
