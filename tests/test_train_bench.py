"""benchmarks/train_bench.py's acceptance table runs end to end (on the CPU, tiny), so that the GPU run of the
same code cannot fail on something silly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "train_bench.py"


def test_acceptance_table_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("train_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--table", "--tiles", "3", "--ngf", "8", "--batches", "1", "2", "--baseline",
                "--fp32", "--workers", "0"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "batch" not in line]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [(c[0], c[1], c[2], c[3]) for c in cells] == [
        ("1", "ours", "eager", "in memory"),
        ("1", "ours, fp32", "eager", "in memory"),
        ("1", "before", "eager", "DataLoader workers"),
        ("2", "ours", "eager", "in memory"),
        ("2", "ours, fp32", "eager", "in memory"),
        ("2", "before", "eager", "DataLoader workers"),
    ]
    assert [c[4] for c in cells if c[1] != "ours"] == ["fp32"] * 4
    assert all(c[4] in ("fp32", "bf16") for c in cells if c[1] == "ours")  # precision = auto: measured on this CPU
    for c in cells:
        steps, tiles = float(c[5]), float(c[6])
        assert steps > 0 and abs(tiles - steps * int(c[0])) <= 0.5 + 0.01 * tiles
        assert (c[8] != "-") == c[1].startswith("ours")  # upload time for the in-memory tiles only
    assert "batch 1 ours: precision: " in out and "step: cpu: CUDA graphs need a CUDA GPU" in out
    assert "batch 1 before: precision: precision = fp32" in out
