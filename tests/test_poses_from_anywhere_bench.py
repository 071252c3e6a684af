"""``benchmarks/poses_from_anywhere.py --quick``: every row of the quick plan runs and is tabulated with
finite numbers (toybox16, 3deg-5pct, seed 0, NeRF rows at 20 iterations; ~40-60 s on 2 CPU cores)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("pycolmap")


def test_quick_benchmark_table(tmp_path: Path) -> None:
    out = tmp_path / "pfa"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.poses_from_anywhere", "--output", str(out), "--quick", "--jobs", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from benchmarks.poses_from_anywhere import ROWS

    with open(out / "results.csv") as f:
        results = list(csv.DictReader(f))
    assert sorted(r["row"] for r in results) == sorted(ROWS)
    for r in results:
        assert (r["scene"], r["level"], r["seed"]) == ("toybox16", "3deg-5pct", "0")
        assert r["status"] == "ok", r
        for key in ("rotation_median_deg", "centre_median_pct", "ate_pct", "wall_s"):
            assert math.isfinite(float(r[key])), (r["row"], key, r[key])
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert sorted(e["row"] for e in summary) == sorted(ROWS)
    for key in ("rotation_median_deg_mean", "centre_median_pct_mean", "ate_pct_mean", "wall_s_mean"):
        assert all(math.isfinite(float(e[key])) for e in summary), key
    by_row = {r["row"]: r for r in results}
    assert float(by_row["input"]["rotation_median_deg"]) == pytest.approx(3.0, abs=0.3)
    # the tracks + bundle adjustment must improve the 3 deg input (a loose bound: 16 views only)
    assert float(by_row["posefix-tracks"]["rotation_median_deg"]) < float(by_row["input"]["rotation_median_deg"])
    md = (out / "summary.md").read_text()
    assert "posefix-tracks" in md and "Targets" in md
    assert "rot med (deg)" in proc.stdout and "targets:" in proc.stdout
    assert len(list((out / "rows").glob("*.json"))) == len(ROWS)
    # resumable: a second run skips every row
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.poses_from_anywhere", "--output", str(out), "--quick", "--list"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert "0 to run" in again.stdout, again.stdout
