"""pipeline.check_run: the scheduler's check after a job, on summaries laid out as the job writes them."""

from __future__ import annotations

import json

import pytest

from pipeline import check_run
from storage.layout import summary_path


def _run(prefix, ok: int, failed: int, status: str = "complete") -> str:
    path = summary_path(str(prefix))
    prefix.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"status": status, "counts": {"videos_ok": ok, "videos_failed": failed, "clips": 3 * ok}}, f)
    return str(prefix)


def test_within_the_rate_passes_and_over_it_fails(tmp_path, capsys):
    prefix = _run(tmp_path / "a", ok=19, failed=1)  # 5%
    assert check_run.main(["--output_prefix", prefix, "--max_failure_rate", "0.05"]) == 0
    assert "failure rate 0.050" in capsys.readouterr().out
    assert check_run.main(["--output_prefix", prefix, "--max_failure_rate", "0.04"]) == 1
    err = capsys.readouterr().err
    assert "5.0% of the videos failed" in err and f"{prefix}/**/failures-*.parquet" in err


def test_no_complete_run_is_its_own_exit_code(tmp_path, capsys):
    assert check_run.main(["--output_prefix", str(tmp_path / "never")]) == 2
    assert "no complete run" in capsys.readouterr().err
    assert check_run.main(["--output_prefix", _run(tmp_path / "b", 1, 0, status="running")]) == 2


def test_an_empty_run_has_no_failures(tmp_path):
    assert check_run.failure_rate({"counts": {"videos_ok": 0, "videos_failed": 0}}) == 0.0
    assert check_run.main(["--output_prefix", _run(tmp_path / "c", 0, 0)]) == 0


def test_a_bad_rate_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        check_run.main(["--output_prefix", str(tmp_path), "--max_failure_rate", "1.5"])
    assert e.value.code == 2 and "--max_failure_rate takes a number in [0, 1], got '1.5'" in capsys.readouterr().err
