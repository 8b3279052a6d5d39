"""Checks a finished extraction run: did it complete, and did too many of its videos fail?

    python -m pipeline.check_run --output_prefix PREFIX [--max_failure_rate 0.05]   # or: s3d-check-run

Reads PREFIX/run_summary.json (any Beam filesystem), prints the counts and the failure
rate, and exits 0 when the run completed within the rate, 1 when too many videos failed,
2 when there is no complete run under the prefix. Schedulers run it after the job
(the Airflow DAG does).
"""

from __future__ import annotations

import argparse
import sys

from storage.layout import any_layout_glob, read_summary, summary_path


def failure_rate(summary: dict) -> float:
    """Failed videos over all videos the run accounted for (0 for a run with no videos)."""
    counts = summary["counts"]
    total = counts["videos_ok"] + counts["videos_failed"]
    return counts["videos_failed"] / total if total else 0.0


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--max_failure_rate takes a number in [0, 1], got {value!r}") from e
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"--max_failure_rate takes a number in [0, 1], got {value!r}")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.check_run", description=__doc__.splitlines()[0])
    parser.add_argument("--output_prefix", required=True, help="the run's output prefix")
    parser.add_argument("--max_failure_rate", type=_rate, default=0.05,
                        help="largest share of failed videos that passes (default: 0.05)")
    args = parser.parse_args(argv)
    summary = read_summary(args.output_prefix)
    if summary is None or summary.get("status") != "complete":
        print(f"error: no complete run under {args.output_prefix}: {summary_path(args.output_prefix)} is missing "
              "(the job failed or is still running)", file=sys.stderr)
        return 2
    rate = failure_rate(summary)
    print(f"{summary['counts']} -> failure rate {rate:.3f} (max {args.max_failure_rate})")
    if rate > args.max_failure_rate:
        print(f"error: {rate:.1%} of the videos failed (more than {args.max_failure_rate:.1%}): see "
              f"{any_layout_glob(args.output_prefix, 'failures')} for the reasons", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
