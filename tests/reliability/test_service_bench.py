"""The service load benchmark (`tailtune bench service`, `make reliability`) at CI size.

The full run (2,000 trials, 50 clients for 30 s, 200 submissions, 1/8/32 workers) takes minutes;
here every step runs small against a fresh PostgreSQL database, and the test holds it to what
the benchmark promises: no failed request, every route measured, every submitted study created
with all its trials queued, the table written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search_spaces.store import ATTR_SPEC, make_storage, trial_counts
from service import benchmark

SUBMISSIONS = 20
SUBMISSION_TRIALS = 14  # the preset's 14 baselines and nothing else: the smallest valid study


@pytest.mark.slow
@pytest.mark.postgres
def test_the_benchmark_runs_clean_at_ci_size(pg_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out, raw = tmp_path / "bench-service.md", tmp_path / "bench-service.json"
    rc = benchmark.main([
        "--storage", pg_url, "--trials", "200", "--clients", "8", "--duration", "3",
        "--submissions", str(SUBMISSIONS), "--submission-trials", str(SUBMISSION_TRIALS),
        "--workers", "1,4", "--cycles", "2", "--out", str(out), "--json", str(raw),
    ])
    printed = capsys.readouterr().out
    results = json.loads(raw.read_text())
    assert rc == 0 and results["errors"] == 0, printed

    routes = results["read"]["routes"]
    assert set(routes) == {*benchmark.ROUTES, "all"}
    for name, s in routes.items():
        assert s["requests"] > 0 and s["errors"] == 0 and 0 < s["p50_ms"] <= s["p99_ms"], name
    assert results["fill"]["complete"] + results["fill"]["pruned"] + results["fill"]["fail"] == 200

    burst = results["burst"]
    assert burst["requests"] == SUBMISSIONS and burst["errors"] == 0 and not burst["problems"]
    storage = make_storage(pg_url)
    try:
        studies = {s.study_name: s for s in storage.get_all_studies()}
        assert set(burst["names"]) <= set(studies)
        counts = trial_counts(storage, [studies[n]._study_id for n in burst["names"]])
    finally:
        storage.engine.dispose()
    for name in burst["names"]:
        assert ATTR_SPEC in studies[name].user_attrs
        c = counts[studies[name]._study_id]
        assert c.waiting == c.total == SUBMISSION_TRIALS, name

    assert [(c["workers"], c["cycles"], c["errors"]) for c in results["cycles"]] == [(1, 2, 0), (4, 8, 0)]
    assert all(c["p50_s"] > 0 for c in results["cycles"])

    table = out.read_text()
    assert table.strip() in printed
    for name in benchmark.ROUTES:
        assert f"| {name} `GET" in table
    assert "errors in all: **0**" in table


def test_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--storage", "--admin-url", "--trials", "--clients", "--duration", "--submissions",
                   "--submission-trials", "--workers", "--cycles", "--api-workers", "--out", "--json"):
        assert option in text


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "1,x"], ["--duration", "0"],
                                  ["--submission-trials", "3"], ["--trials", "10"]])
def test_bad_options_are_refused_before_anything_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rc = benchmark.main(argv)
        raise SystemExit(rc)
    assert exit_.value.code == 2
