"""Junk in, one clear error out (issue 13): every file the CLI reads, damaged in fixed, seeded ways.

Each case must end in exit 1 with one ``Error:`` line naming the file, no traceback, no warning and nothing
written; a damaged file that still loads may succeed (see tests/fuzz_cases.py). The per-input table:

    python -m tests.test_fuzz_inputs            # add --loaded to list the cases that loaded
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from .fuzz_cases import RANDOM_CONFIG_CASES, RANDOM_WEIGHTS_CASES, TARGETS, TargetResult, cases, make_valid_inputs
from .fuzz_cases import run_target
from .train_fixtures import one_torch_thread  # noqa: F401  (autouse: small CPU models run faster on one thread)

# The issue's escapes, by seed of np.random.default_rng(seed).bytes(n): random weights on which torch.load (2.13)
# raised IndexError, and junk configs that are not UTF-8 (tomllib raised UnicodeDecodeError).
ISSUE_WEIGHTS_SEEDS = (17, 21, 58)
ISSUE_CONFIG_SEEDS = tuple(range(9))


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return make_valid_inputs(tmp_path_factory.mktemp("fuzz-valid"))


@pytest.mark.parametrize("target", TARGETS, ids=[t.label for t in TARGETS])
def test_junk_is_refused_with_one_clear_error(target, valid, tmp_path):
    result = run_target(target, valid, tmp_path)
    failures = result.failures()
    assert not failures, f"{len(failures)} of {len(result.outcomes)} cases:\n" + "\n".join(failures)
    assert result.count("clean") >= len(result.outcomes) // 2  # most junk must actually be refused
    loaded = [case.name for case, outcome in result.outcomes if outcome.kind == "loaded"]
    print(f"{target.label}: {len(result.outcomes)} cases, {len(loaded)} damaged but loaded: {', '.join(loaded)}")


def test_the_suite_has_over_1000_cases_including_the_issues_escapes(valid):
    counts = {t.label: sum(1 for _ in cases(t, valid)) for t in TARGETS}
    assert sum(counts.values()) >= 1000, counts
    weights = dict(RANDOM_WEIGHTS_CASES)[2000]
    assert set(ISSUE_WEIGHTS_SEEDS) <= set(weights) and len(weights) == 60
    assert set(ISSUE_CONFIG_SEEDS) <= set(dict(RANDOM_CONFIG_CASES)[9])
    for seed in ISSUE_CONFIG_SEEDS:
        with pytest.raises(UnicodeDecodeError):
            np.random.default_rng(seed).bytes(9).decode("utf-8")


@pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="the seeds were measured with torch 2.13")
@pytest.mark.parametrize("seed", ISSUE_WEIGHTS_SEEDS)
def test_the_issues_weights_seeds_still_make_torch_load_raise_index_error(seed):
    """The reproduction is real: torch.load itself still fails this way on these bytes (our loader must not)."""
    with warnings.catch_warnings(), pytest.raises(IndexError):
        warnings.simplefilter("ignore")
        torch.load(io.BytesIO(np.random.default_rng(seed).bytes(2000)), map_location="cpu", weights_only=True)


def table(results: list[TargetResult]) -> str:
    lines = ["| input | cases | clean error | damaged but loaded | failed |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.target.label} | {len(r.outcomes)} | {r.count('clean')} | {r.count('loaded')} | "
                     f"{r.count('failed')} |")
    total = [sum(len(r.outcomes) for r in results)] + [sum(r.count(k) for r in results) for k in
                                                         ("clean", "loaded", "failed")]
    lines.append("| **all** | " + " | ".join(map(str, total)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every fuzz case and print the per-input table.")
    parser.add_argument("--loaded", action="store_true", help="also list the cases that loaded")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        valid = make_valid_inputs(Path(tmp) / "valid")
        results = [run_target(t, valid, Path(tmp) / f"target{i}") for i, t in enumerate(TARGETS)]
    print(table(results))
    print(f"\n{time.perf_counter() - started:.1f} s")
    for r in results:
        for failure in r.failures():
            print(f"FAILED {r.target.label}: {failure}")
        if args.loaded:
            print(f"{r.target.label}: loaded: {', '.join(c.name for c, o in r.outcomes if o.kind == 'loaded')}")


if __name__ == "__main__":
    main()
