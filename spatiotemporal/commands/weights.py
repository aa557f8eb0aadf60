"""`spatiotemporal weights list|download|verify|path`: the model zoo of published checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "published weights: list the model zoo, download into the cache, verify hashes, print paths"


ENVIRONMENT = """environment:
  SPATIOTEMPORAL_CACHE           cache root (default: the platform's user cache dir); files copied by
                                 hand go to <cache>/weights/<entry>/<file>
  SPATIOTEMPORAL_OFFLINE=1       no downloads: a file not in the cache is an error naming where to put it
  HF_HUB_OFFLINE=1               the same, and huggingface_hub's own offline switch
  SPATIOTEMPORAL_WEIGHTS_MIRROR  fetch plain files from <mirror>/<host>/<path>; user:token@ in the URL
                                 is sent as HTTP basic auth and never printed
  HF_ENDPOINT, HF_HUB_CACHE, HF_HOME   the hub (or its mirror) and its cache, as huggingface_hub reads them
  TORCH_HOME                     a torchvision file already in <TORCH_HOME>/hub/checkpoints is used there"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The one-line errors name the entry, its URL and the path; the switches behind them are here.
    parser.epilog = ENVIRONMENT
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every catalogue entry: model, params, published figure, cached")
    listing.add_argument("--model", default=None, help="only this model's entries")
    shape = listing.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shape.add_argument("--markdown", action="store_true", help="print the README's model-zoo table")
    download = actions.add_parser("download", help="fetch entries into the cache (hash-checked)")
    download.add_argument("names", nargs="+", metavar="NAME")
    verify = actions.add_parser("verify", help="hash every cached file again (or the named ones)")
    verify.add_argument("names", nargs="*", metavar="NAME")
    path = actions.add_parser("path", help="print the local file of an entry (downloading it if needed)")
    path.add_argument("name", metavar="NAME")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights and --random-weights, as every command that predicts with a model takes them."""
    parser.add_argument("--weights", default=None, metavar="NAME",
                        help="published weights from the catalogue, e.g. k400 or mvitv2_s.k400 "
                             "(`spatiotemporal weights list`); downloaded into the cache on first use")
    parser.add_argument("--random-weights", action="store_true",
                        help="run with randomly initialised weights (smoke tests, benchmarks): the output says so")


def _figure(entry) -> str:
    p = entry.published
    return f"{p.value:g} {p.metric} {p.dataset}" if p else "-"


def rows(model: str | None = None) -> list[dict]:
    from spatiotemporal.models.registry import get_spec
    from spatiotemporal.weights import entries_for, local_path

    out = []
    for entry in entries_for(model):
        # The file's own count where its publisher gives it, else the paper's for the architecture.
        params_m = entry.num_params / 1e6 if entry.num_params else get_spec(entry.model).published_params_m
        # Where the file is, not whether it is intact: a listing hashes nothing (`weights verify` does).
        cached = local_path(entry) if entry.downloadable else None
        p = entry.published
        out.append({
            "name": entry.name, "model": entry.model, "kind": entry.kind, "source": entry.location,
            "classes": entry.classes, "num_classes": entry.num_classes, "params_m": params_m,
            "sha256": entry.sha256 or None, "size_mib": entry.size_mib, "licence": entry.licence,
            "published": None if p is None else {"dataset": p.dataset, "metric": p.metric, "value": p.value,
                                                 "protocol": p.protocol, "reference": p.reference},
            "confirmed": entry.confirmed, "note": entry.note, "cached": str(cached) if cached else None,
        })
    return out


def markdown_table() -> str:
    """The README's model-zoo table, written from the catalogue."""
    from spatiotemporal.weights import ENTRIES

    lines = ["| weights | model | source | published | protocol | confirmed |", "|---|---|---|---|---|---|"]
    for e in ENTRIES:
        source = {"url": "URL", "hf": f"HF `{e.hf_repo}`", "unavailable": "not downloadable"}[e.kind]
        protocol = e.published.protocol if e.published else e.note
        lines.append(f"| `{e.name}` | `{e.model}` | {source} | {_figure(e)} | {protocol} | "
                     f"{'yes' if e.confirmed else 'no: ' + e.note} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from spatiotemporal.weights import WeightsError, get_entry, verify, weights_file

    try:
        if args.action == "list":
            if args.markdown:
                print(markdown_table())
                return 0
            table = rows(args.model)
            if args.json:
                print(json.dumps(table, indent=2))
                return 0
            print(f"{'weights':36} {'params (M)':>10} {'published':>36}  cached")
            for r in table:
                params = f"{r['params_m']:.2f}" if r["params_m"] else "-"
                figure = _figure(get_entry(r["name"]))
                cached = "yes" if r["cached"] else ("n/a" if r["kind"] == "unavailable" else "no")
                print(f"{r['name']:36} {params:>10} {figure:>36}  {cached}")
            return 0
        if args.action == "download":
            for name in args.names:
                print(f"{name}: {weights_file(name)}")
            return 0
        if args.action == "path":
            print(weights_file(args.name))
            return 0
        entries = [get_entry(n) for n in args.names] if args.names else None
        return _verify(entries, verify)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _verify(entries, verify) -> int:
    from spatiotemporal.weights import ENTRIES

    named = entries is not None
    bad = 0
    for entry in entries if named else ENTRIES:
        state, detail = verify(entry)
        if state == "unavailable" or (state == "missing" and not named):
            continue  # a bare `verify` checks what is cached
        bad += state != "ok"
        print(f"{entry.name}: {state} {detail}")
    return 1 if bad else 0
