"""`spatiotemporal infer PATH... --model NAME`: top-k labels for videos, per-class point counts
(and with --out a labeled PLY and a top-down PNG) for point clouds. The model is built once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spatiotemporal.commands.weights import add_weights_arguments
from spatiotemporal.precision import PRECISIONS

HELP = "classify videos (top-k labels) or segment point clouds (.ply) with one model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="videos, or point clouds (.ply/.npy/.pth/scene dirs)")
    parser.add_argument("--model", required=True, help="a registered model name (see `spatiotemporal models`)")
    parser.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    add_weights_arguments(parser)
    parser.add_argument("--views", default=None, help="video test views TxS, e.g. 4x3 (default: the model's protocol)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="videos: bf16 autocast or fp32 (default auto: on a CPU, bf16 where a short probe, "
                             "cached per machine and torch version, times it clearly faster than fp32 at the "
                             "model's matmul shapes, SPATIOTEMPORAL_REPROBE=1 to measure again; on a GPU, bf16 "
                             "where supported)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--out", default=None, help="folder for labeled PLYs and PNG renderings (point clouds)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="point clouds: grid size in metres (default: the one the model was trained at, "
                             "as its checkpoint or config records it, else 0.02)")
    parser.add_argument("--max-fragments", type=int, default=1,
                        help="point clouds: test fragments to predict and vote over; 0 = all, Pointcept's "
                             "protocol (default 1: every point still gets its voxel's prediction)")


def _video(args, paths, report, fail) -> dict:
    """Classify the videos; returns the precision choice (and the probe's result) for --json."""
    from spatiotemporal.infer import VideoClassifier

    classifier = VideoClassifier(args.model, args.checkpoint, views=args.views, device=args.device,
                                 precision=args.precision, weights=args.weights,
                                 random_weights=args.random_weights)
    _say_if_random(args)
    for path in paths:
        try:
            prediction = classifier.predict(path, topk=args.topk)
        except Exception as err:  # noqa: BLE001 - one line per failed file, then carry on
            fail(path, err)
            continue
        report({"path": path, "labels": prediction.labels, "probs": prediction.probs,
                "class_ids": prediction.class_ids, "precision": classifier.precision})
        if not args.json:
            print(path)
            for rank, (label, prob) in enumerate(zip(prediction.labels, prediction.probs), 1):
                print(f"  {rank}. {label:<40s} {prob:.4f}")
    return classifier.precision_choice.as_dict()


def _points(args, paths, report, fail) -> None:
    import time

    from spatiotemporal.infer import PointSegmenter, output_stems, render_top_down, write_labeled_ply

    # Before the model is built: a bad --out should cost nothing and say so in one line.
    out = _output_folder(args.out) if args.out else None
    # Named over all inputs up front, so inputs sharing a file name never overwrite each other.
    stems = output_stems(paths)
    segmenter = PointSegmenter(args.model, args.checkpoint, device=args.device, voxel_size=args.voxel_size,
                               max_fragments=args.max_fragments, weights=args.weights,
                               random_weights=args.random_weights)
    _say_if_random(args)
    for path, stem in zip(paths, stems):
        start = time.perf_counter()
        try:
            prediction = segmenter.predict(path)
        except Exception as err:  # noqa: BLE001 - one line per failed file, then carry on
            fail(path, err)
            continue
        record = {"path": path, "points": int(len(prediction.segment)), "fragments": prediction.fragments,
                  "voxel_size": segmenter.voxel_size, "counts": prediction.counts(),
                  "seconds": round(time.perf_counter() - start, 2)}
        if out is not None:
            record["labeled_ply"] = str(out / f"{stem}.labeled.ply")
            record["ply_label"] = prediction.label_kind  # what the PLY's `label` property holds
            record["png"] = str(out / f"{stem}.png")
            write_labeled_ply(prediction, record["labeled_ply"])
            render_top_down(prediction, record["png"])
        # ru_maxrss is the process's high-water mark: the number a memory budget is about.
        record["peak_rss_gib"] = round(_peak_rss_bytes() / 2**30, 2)
        report(record)
        if not args.json:
            print(f"{path}: {record['points']} points, {record['fragments']} fragments, {record['seconds']} s, "
                  f"peak memory {record['peak_rss_gib']} GiB")
            for name, count in record["counts"].items():
                print(f"  {name:<16s} {count}")
            if out is not None:
                print(f"  wrote {record['labeled_ply']} and {record['png']}")
                if prediction.label_kind != "nyu40":
                    print(f"  the PLY's label property holds class indices 0..{len(prediction.class_names) - 1} "
                          "(not the ScanNet label set, so no nyu40 ids)")


def _output_folder(out: str) -> Path:
    """`--out`, created if missing; ValueError (reported as `error: ...`, exit 2) if it cannot be."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out} is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
    return folder


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args: argparse.Namespace) -> int:
    import json

    from spatiotemporal.infer import check_topk
    from spatiotemporal.models.registry import get_spec

    from spatiotemporal.weights import require_weights

    try:
        spec = get_spec(args.model)
        check_topk(args.topk)
        random_note = require_weights(args.model, args.checkpoint, args.weights, args.random_weights)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    except ValueError as err:  # WeightsError is one
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.random_note = random_note  # printed once the model is built, above the predictions
    results: list[dict] = []
    failures: list[dict] = []

    def report(record: dict) -> None:
        results.append(record)

    def fail(path: str, err: BaseException) -> None:
        from spatiotemporal.io.errors import reason_line

        reason = reason_line(err)
        failures.append({"path": path, "error": reason})
        print(f"FAILED {path}: {reason}", file=sys.stderr, flush=True)

    from spatiotemporal.io.errors import CheckpointError

    precision = None  # videos only: what --precision became, and why
    try:
        if spec.family == "points":
            _points(args, args.paths, report, fail)
        else:
            precision = _video(args, args.paths, report, fail)
    except (CheckpointError, ValueError, RuntimeError) as err:  # WeightsError is a ValueError
        # Raised before any input ran: building the model (bad checkpoint, weights that cannot be
        # had, bad --views, no CUDA) or preparing --out.
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "weights": _weights_label(args), "results": results,
                          "failures": failures, **({"precision": precision} if precision else {})}, indent=2))
    return 1 if failures else 0


def _say_if_random(args: argparse.Namespace) -> None:
    """The random-weights note on stderr, as the pipelines print it: predictions piped from stdout
    stay predictions (JSON also says it, in its "weights" field)."""
    from pipelines.weights import say_if_random

    say_if_random(getattr(args, "random_note", ""))


def _weights_label(args: argparse.Namespace) -> str:
    """What the model's weights are, for the JSON output: an entry, a file, or "random"."""
    if args.weights:
        return args.weights
    return args.checkpoint if args.checkpoint else "random"
