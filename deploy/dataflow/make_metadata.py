"""Writes the Flex Template's metadata.json from the extraction job's own option definitions.

    python deploy/dataflow/make_metadata.py > deploy/dataflow/metadata.json

Every option of `pipeline.extract` becomes a template parameter with its help text and
a validation regex derived from its type, so the template cannot drift from the job
(a test compares this output with the committed file).
"""

from __future__ import annotations

import argparse
import json
import sys

REQUIRED = {"output_prefix"}
NUMBER = r"^[0-9]+(\.[0-9]+)?$"
INTEGER = r"^[0-9]+$"
PATH = r"^[^[:space:]]+$"  # POSIX ERE, as Flex Templates read regexes: no \S


def extract_parser() -> argparse.ArgumentParser:
    """The parser `python -m pipeline.extract` parses with, from the same place."""
    from pipeline.extract import JOB_ARGS
    from pipeline.runner import job_parser

    return job_parser(*JOB_ARGS)


def regex_for(action: argparse.Action) -> str:
    if action.choices:
        return "^(" + "|".join(str(c) for c in action.choices) + ")$"
    if action.type is int:
        return INTEGER
    if action.type is float:
        return NUMBER
    return getattr(action.type, "template_regex", PATH)  # a flag type of the project's says what it accepts


def metadata() -> dict:
    parameters, seen = [], set()
    for action in extract_parser()._actions:
        if not action.option_strings or action.dest in seen or action.dest == "help":  # -v: --log_level
            continue
        seen.add(action.dest)
        name = action.dest
        help_text = " ".join((action.help or "").split())
        parameters.append({
            "name": name,
            "label": name.replace("_", " ").capitalize(),
            "helpText": help_text,
            "isOptional": name not in REQUIRED,
            "regexes": [regex_for(action)],
        })
    return {
        "name": "S3D MIL-NCE feature extraction",
        "description": "Decode videos with PyAV, embed 32-frame clips with S3D MIL-NCE, write clips, videos and "
        "failures tables as Parquet (see the project README).",
        "parameters": parameters,
    }


def main() -> int:
    json.dump(metadata(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
