"""benchmarks/colmap_track.py: presets, and a ``--quick`` run producing a well-formed table / JSON / CSV /
plot, with COLMAP's failure reported as such, the BA baseline, and a stand-in refiner (an identity
"refine" that copies the model: the plumbing, without a NeRF's minutes of training)."""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import pytest
from benchmarks import colmap_track as track

pytest.importorskip("pycolmap")

from nerf_posefix.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]



IDENTITY_REFINE = textwrap.dedent(
    """
    import argparse
    from pathlib import Path

    from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model

    parser = argparse.ArgumentParser()
    for flag in ("--colmap-model", "--images", "--output", "--iterations", "--method", "--threads", "--regularizer"):
        parser.add_argument(flag)
    args = parser.parse_args()
    assert Path(args.images).is_dir()
    write_colmap_model(read_colmap_model(args.colmap_model), Path(args.output) / "sparse" / "0")
    """
)


def test_presets_parse_and_name_their_scenes():
    for path in (track.DEFAULT_CONFIG, track.QUICK_CONFIG):
        config = track.load_config(path)
        assert config.cases and all(c.scene in config.scenes for c in config.cases)
        assert config.ba_levels and config.ba_scene in config.scenes
    default = track.load_config(track.DEFAULT_CONFIG)
    assert {c.name for c in default.cases} >= {"default-free", "default-fixed", "few-views-15", "downscale-4x", "low-texture"}
    assert {c.intrinsics for c in default.cases if c.scene == "toybox" and c.num_views is None} == {"free", "fixed"}
    assert next(c for c in default.cases if c.name == "few-views-15").num_views == 15
    assert next(c for c in default.cases if c.name == "downscale-4x").downscale == 4
    assert default.scenes["toybox-lowtex"].texture_contrast < 1
    assert len(default.refiners) == 4


def test_bad_preset_is_an_input_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes: {a: {path: assets/toybox, colour: 3}}\ncases: []\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*colour"):
        track.load_config(bad)
    bad.write_text("scenes: {a: {path: assets/toybox}}\ncases: [{name: c, scene: b}]\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*scene 'b'"):
        track.load_config(bad)


def test_image_subset_is_evenly_spaced():
    names = [f"{k:03d}.png" for k in range(64)]
    subset = track.image_subset(names, 15)
    assert len(subset) == 15 and subset[0] == "000.png" and len(set(subset)) == 15
    assert track.image_subset(names, None) == names and track.image_subset(names, 100) == names


def test_refiner_flags_are_checked_against_posefix_refine():
    config = track.load_config(track.QUICK_CONFIG)
    assert track.unsupported_flags(track.RefinerSpec("a", ("--method", "posefix-small", "--bounds", "per-camera")), config) == []
    assert track.unsupported_flags(track.RefinerSpec("b", ("--no-such-flag", "1")), config) == ["--no-such-flag"]
    default = track.load_config(track.DEFAULT_CONFIG)  # every refiner of the default preset runs
    assert all(track.unsupported_flags(r, default) == [] for r in default.refiners)
    names = [r.name for r in default.refiners]
    assert {"posefix", "ba-only", "nerfstudio-l2"} <= set(names)
    assert default.refiners[names.index("posefix")].args == ("--method", "posefix-small")  # posefix refine's defaults


def test_quick_track_writes_a_well_formed_table(tmp_path, capsys):
    fake = tmp_path / "identity_refine.py"
    fake.write_text(IDENTITY_REFINE)
    out = tmp_path / "track"
    argv = ["--output", str(out), "--quick", "--refine-command", f"{sys.executable} {fake}"]
    assert track.main(argv) == 0
    printed = capsys.readouterr().out
    assert "COLMAP track" in printed and "COLMAP BA" in printed

    report = json.loads((out / "colmap_track.json").read_text())
    rows = {(r["case"], r["stage"]): r for r in report["rows"]}
    assert list(rows) == [
        ("default-fixed", "COLMAP"),
        ("default-fixed", "posefix"),
        ("default-fixed", "nerfstudio-l2"),
        ("few-views-15", "COLMAP"),
        ("few-views-15", "posefix"),
        ("few-views-15", "nerfstudio-l2"),
        ("noisy 3deg-5pct", "noisy input"),
        ("noisy 3deg-5pct", "COLMAP BA"),
    ]
    colmap = rows[("default-fixed", "COLMAP")]
    assert colmap["registered"] == "64/64"
    assert colmap["rotation_median_deg"] < 0.5 and colmap["wall_time_s"] > 0
    # The identity refiner returns COLMAP's poses: gain 1, measured on the same cameras.
    refined = rows[("default-fixed", "posefix")]
    assert refined["gain_rotation"] == pytest.approx(1.0, abs=1e-6)
    assert refined["gain_translation"] == pytest.approx(1.0, abs=1e-6)
    # 15 views of 128x128: COLMAP fails (measured), which is reported as COLMAP's failure.
    few = rows[("few-views-15", "COLMAP")]
    assert few["registered"].endswith("/15") and few["note"]
    assert int(few["registered"].split("/")[0]) < 15
    assert "COLMAP failed" in rows[("few-views-15", "posefix")]["note"]
    # Bundle adjustment from the noisy-pose track's 3 deg / 5 % input.
    noisy = rows[("noisy 3deg-5pct", "noisy input")]
    assert noisy["rotation_median_deg"] == pytest.approx(3.0, rel=0.1) and noisy["registered"] == "56"
    assert rows[("noisy 3deg-5pct", "COLMAP BA")]["gain_rotation"] > 5

    with open(out / "colmap_track.csv") as fid:
        csv_rows = list(csv.DictReader(fid))
    assert len(csv_rows) == len(report["rows"])
    assert {"case", "stage", "registered", "rotation_median_deg", "ate_rmse", "wall_time_s", "note"} <= set(csv_rows[0])
    assert (out / "colmap_track.png").stat().st_size > 10_000

    # A second run reuses every stage's stored result.
    assert track.main(argv) == 0
    again = json.loads((out / "colmap_track.json").read_text())
    assert all(c["sfm"].get("cached") for c in again["cases"]) and all(b.get("cached") for b in again["ba"])
    assert [r["rotation_median_deg"] for r in again["rows"]] == pytest.approx(
        [r["rotation_median_deg"] for r in report["rows"]], nan_ok=True
    )
