"""`spatiotemporal models [--json]`: every registered model with its size, input and test protocol."""

from __future__ import annotations

import argparse
import json

HELP = "list models: parameters, input spec, GFLOPs per view, test views"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--family", choices=["video", "points"], help="only this family")
    parser.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count (faster)")


def run(args: argparse.Namespace) -> int:
    from spatiotemporal.models.summary import describe_model
    from spatiotemporal.models import list_models

    from spatiotemporal.weights import entries_for

    rows = [describe_model(name, flops=not args.no_flops) for name in list_models(args.family)]
    for row in rows:  # the published checkpoints of each architecture (`spatiotemporal weights list`)
        row["weights"] = [e.tag for e in entries_for(row["name"]) if e.downloadable]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':32} {'family':7} {'params (M)':>11} {'published':>10} {'input':>18} {'GFLOPs/view':>12} {'views':>6}  weights"
    print(header)
    print("-" * len(header))
    for r in rows:
        published = f"{r['published_params_m']:.2f}" if r["published_params_m"] else "-"
        gflops = f"{r['gflops_per_view']:.1f}" if r["gflops_per_view"] is not None else "-"
        print(
            f"{r['name']:32} {r['family']:7} {r['params_m']:11.2f} {published:>10} "
            f"{r['input']:>18} {gflops:>12} {r['test_views']:>6}  {', '.join(r['weights']) or '-'}"
        )
    return 0
