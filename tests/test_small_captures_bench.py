"""``benchmarks/small_captures.py``: the windows cover castle-P30's loop, and the summary counts broken runs apart
(pure bookkeeping: the benchmark itself runs COLMAP and refine on real photos and is not run here)."""

from __future__ import annotations

import math

from benchmarks.small_captures import BROKEN_DEG, LOOP, summarise, windows


def test_windows_cover_the_loop_with_consecutive_photos() -> None:
    for size, count in ((8, 4), (11, 3)):
        found = windows(size)
        assert len(found) == count
        assert set().union(*(set(names) for _, names in found)) == set(LOOP)  # every photo in some window
        for _, names in found:
            assert len(names) == size == len(set(names))
            start = LOOP.index(names[0])
            assert names == [LOOP[(start + k) % len(LOOP)] for k in range(size)]  # consecutive, wrapping
    assert windows(8)[1][1][0] == "0009.jpg" and "0000.jpg" in windows(8)[-1][1]


def test_summary_keeps_broken_runs_out_of_the_medians() -> None:
    def run(row: str, pairwise: float, window: str) -> dict:
        return {"size": 8, "row": row, "window": window, "pairwise_median_deg": pairwise, "rot_median_deg": 2 * pairwise,
                "centre_median_pct": 0.1}

    records = [run("colmap", 0.1, "a"), run("colmap", 0.3, "b"), run("colmap", BROKEN_DEG + 13.0, "c"),
               {"size": 8, "row": "refine-poses", "window": "a", "error": "failed"}]
    by_row = {r["row"]: r for r in summarise(records)}
    assert by_row["colmap"]["runs"] == 3 and by_row["colmap"]["broken"] == 1
    assert by_row["colmap"]["pairwise_median_deg"] == 0.2 and by_row["colmap"]["rot_sim3_median_deg"] == 0.4
    assert by_row["colmap"]["worst_pairwise_median_deg"] == 0.3
    assert by_row["refine-poses"]["broken"] == 1 and math.isnan(by_row["refine-poses"]["pairwise_median_deg"])
