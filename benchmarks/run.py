"""`make bench`: run every benchmark section against its reference, in the same run, and write
BENCHMARKS.md. A section module `benchmarks/bench_<name>.py` exposes `TITLE` and
`run(args) -> str` (markdown). Sections are replaced in place between markers, so one section can
be re-measured (`--only decode`) without losing the others.

Sections are kept per kind of CPU (model name and matrix units: AMX, AVX512-BF16, or neither), since
the same code runs at different speeds, and meets different targets, on each: re-measuring on an AMD
EPYC leaves the Xeon's figures in place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import re
import shlex
import sys
from pathlib import Path

import benchmarks
from spatiotemporal.machine import cpu_name, machine_kind


def machine_key(kind: str) -> str:
    """`kind` as a marker-safe slug: 'intel-xeon-processor-amx'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\([a-z]+\)", "", kind.lower())).strip("-")


def machine_line() -> str:
    cpu = cpu_name()
    import torch

    # Timings mean little on a busy machine; the load average says how busy it was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {platform.python_version()}; "
        f"load average at start {load}"
    )


def section_names() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def replace_section(document: str, name: str, body: str) -> str:
    """`document` with section `name` ('models_vit@amd-epyc-avx512-bf16') set to `body`: in place if
    it is there, else after the same benchmark's section for another machine, else at the end."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document)
    benchmark = name.split("@", 1)[0]
    siblings = list(re.finditer(rf"<!-- /section:{re.escape(benchmark)}@[^ ]+ -->\n", document))
    if siblings:
        at = siblings[-1].end()
        return document[:at] + "\n" + block + "\n" + document[at:]
    return document.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--only", default="", help="comma-separated section names")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or section_names()
    out = Path(args.out)
    document = out.read_text() if out.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== {name}: {module.TITLE}", flush=True)
        body = module.run(args)
        kind = machine_kind()
        header = (
            f"## {module.TITLE} — {kind}\n\n"
            f"- command: `{command.strip()}`\n- machine: {machine_line()}\n"
            f"- date: {dt.date.today().isoformat()}\n\n"
        )
        document = replace_section(document, f"{name}@{machine_key(kind)}", header + body)
        out.write_text(document)
        print(body, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
