"""Runs the benchmarks and writes BENCHMARKS.md.

    python -m benchmarks.run --model DIR [--output BENCHMARKS.md] [--only model,decode]

Each measurement runs in its own subprocess (its own peak memory, no warm caches
shared between variants). The machine is shared and noisy: compare figures within
one run, as ratios, not across runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Callable

from benchmarks import (
    captions_cost,
    chunk_soak,
    decode_less,
    decode_throughput,
    http_inputs,
    index_compare,
    index_throughput,
    isolation,
    launch_skip_done,
    model_throughput,
    pipeline_throughput,
    precision,
    search_throughput,
    shuffle_cost,
)
from benchmarks.common import machine_description

# Each section lives beside what it measures; its function writes the section's markdown.
SECTIONS: dict[str, Callable[..., str]] = {
    "model": model_throughput.model_section, "decode": decode_throughput.decode_section,
    "split": decode_less.split_section, "pipeline": pipeline_throughput.pipeline_section,
    "search": search_throughput.search_section, "ann": index_compare.ann_section,
    "index": index_throughput.index_section, "shuffle": shuffle_cost.shuffle_section,
    "precision": precision.precision_section, "isolation": isolation.isolation_section,
    "launch": launch_skip_done.launch_section, "soak": chunk_soak.section, "http": http_inputs.http_section,
    "captions": captions_cost.section,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="stand-in SavedModel directory")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")

    def log(msg: str) -> None:
        print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    parts = [SECTIONS[n](args.model, log) for n in names]
    header = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python -m benchmarks.run --model .cache/models/standin --output BENCHMARKS.md"
        f"{' --only ' + args.only if args.only != ','.join(SECTIONS) else ''}`) on {started:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {machine_description()}.",
        "",
        "The machine is shared and noisy: read figures as ratios within this one run.",
        "The model is the untrained stand-in; speed does not depend on the weights.",
        "",
    ]
    if names != list(SECTIONS) and os.path.exists(args.output):
        with open(args.output) as f:
            text = replace_sections(f.read(), parts, f"Section {', '.join(names)} re-run with `--only {args.only}` "
                                    f"on {started:%Y-%m-%d %H:%M} UTC on {machine_description()}; compare within "
                                    "a section.", names)
    else:
        text = "\n".join(header) + "\n" + "\n\n".join(parts) + "\n"
    with open(args.output, "w") as f:
        f.write(text)
    log(f"wrote {args.output}")
    return 0


def replace_sections(text: str, parts: list[str], note: str, names: list[str]) -> str:
    """`text` (a BENCHMARKS.md) with the sections of the same `## ` heading replaced by `parts` (new ones appended),
    and `note` (of the re-run of sections `names`) added below the first paragraph."""
    blocks = re.split(r"(?m)^(?=## )", text)
    head, sections = blocks[0], [b.rstrip("\n") + "\n\n" for b in blocks[1:]]
    for part in parts:
        heading = part.splitlines()[0]
        at = next((i for i, b in enumerate(sections) if b.splitlines()[0] == heading), None)
        if at is None:
            sections.append(part + "\n\n")
        else:
            sections[at] = part + "\n\n"
    lines = head.rstrip("\n").split("\n\n")
    # An older re-run note of only sections re-run now describes figures no longer in the file: it goes.
    lines = [p for p in lines if not (m := re.match(r"Section (\S+(?:, \S+)*) re-run with", p))
             or not set(m.group(1).split(", ")) <= set(names)]
    lines.insert(2, note)
    return "\n\n".join(lines) + "\n\n" + "".join(sections).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
