"""TUM trajectories from different clocks and rates: ``posefix compare`` associates them by timestamp as
evo does, and reports evo's numbers.

The pair: a ground truth sampled at 100 Hz and an estimate of the same motion resampled at 30 Hz on
another clock (offset 0.37 s), with timestamp jitter (±3 ms), pose noise (0.5°, 2 cm) and in another
world frame and scale (a Sim(3)). Everything is checked against evo's own API on the same files
(``evo.core.sync.associate_trajectories``, ``evo.main_ape.ape``, ``evo.main_rpe.rpe``): the associated
pairs exactly, APE (translation part, SE(3) and Sim(3) Umeyama alignment) and RPE (translation and
rotation angle, consecutive pairs) to 1e-6 relative.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from evo import main_ape, main_rpe
from evo.core import metrics as evo_metrics
from evo.core import sync
from evo.tools import file_interface
from scipy.spatial.transform import Rotation, Slerp

from nerf_posefix.cli.main import main
from nerf_posefix.errors import InputError
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.tum import associate_timestamps, read_tum_trajectory, write_tum

CLOCK_OFFSET = 0.37  # the estimate's clock runs ahead: t_est = t_true + 0.37 s
REL = 1e-6


def _motion(t: np.ndarray) -> tuple[np.ndarray, Rotation]:
    """A smooth hand-held-like motion: centres [N, 3] (metres) and orientations at times ``t`` (s)."""
    centres = np.stack([2.0 * np.cos(0.3 * t), 1.5 * np.sin(0.45 * t), 0.3 * np.sin(1.1 * t) + 0.05 * t], axis=1)
    rotvec = np.stack([0.4 * np.sin(0.5 * t), 0.3 * t, 0.2 * np.cos(0.7 * t)], axis=1)
    return centres, Rotation.from_rotvec(rotvec)


def _write_tum_rows(path: Path, stamps: np.ndarray, centres: np.ndarray, rot: Rotation) -> None:
    quat = rot.as_quat()  # x y z w
    rows = np.column_stack([stamps, centres, quat])
    with open(path, "w", encoding="utf-8") as fid:
        fid.write("# timestamp tx ty tz qx qy qz qw\n")
        for row in rows:
            fid.write(f"{row[0]:.6f} " + " ".join(f"{v:.9f}" for v in row[1:]) + "\n")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("tum")
    rng = np.random.default_rng(7)
    # ground truth: 100 Hz over 20 s, on the true clock (starts at an epoch-like time, as TUM RGB-D)
    t0 = 1305031102.175304
    t_gt = t0 + np.arange(2000) / 100.0
    c_gt, r_gt = _motion(t_gt - t0)
    _write_tum_rows(tmp / "groundtruth.txt", t_gt, c_gt, r_gt)
    # estimate: 30 Hz on its own clock, starting a bit later and ending earlier, with jitter
    t_true = t0 + 0.8 + np.arange(520) / 30.0 + rng.uniform(-0.003, 0.003, size=520)
    t_est = t_true + CLOCK_OFFSET
    slerp = Slerp(t_gt - t0, r_gt)
    c_true, _ = _motion(t_true - t0)
    r_true = slerp(t_true - t0)
    noise = Rotation.from_rotvec(rng.normal(scale=np.radians(0.5) / np.sqrt(3), size=(520, 3)))
    world = Rotation.from_euler("zyx", [30.0, -10.0, 5.0], degrees=True)
    scale, shift = 0.6, np.array([0.4, -1.0, 2.0])
    c_est = scale * world.apply(c_true + rng.normal(scale=0.02, size=(520, 3))) + shift
    r_est = world * r_true * noise
    _write_tum_rows(tmp / "estimate.txt", t_est, c_est, r_est)
    _write_tum_rows(tmp / "estimate_far.txt", t_est + 1000.0, c_est, r_est)  # another clock altogether
    return {"tmp": tmp, "gt": tmp / "groundtruth.txt", "est": tmp / "estimate.txt", "far": tmp / "estimate_far.txt"}


def _evo_pair(ref: Path, est: Path, t_offset: float, t_max_diff: float = 0.01):  # noqa: ANN202
    traj_ref = file_interface.read_tum_trajectory_file(str(ref))
    traj_est = file_interface.read_tum_trajectory_file(str(est))
    return sync.associate_trajectories(traj_ref, traj_est, max_diff=t_max_diff, offset_2=t_offset)


def _assert_close(ours: float, theirs: float, what: str) -> None:
    assert ours == pytest.approx(theirs, rel=REL), f"{what}: posefix {ours!r}, evo {theirs!r}"


def test_association_equals_evo(pair: dict) -> None:
    ref, est = read_tum_trajectory(pair["gt"]), read_tum_trajectory(pair["est"])
    assert not ref.named and not est.named
    for offset in (-CLOCK_OFFSET, 0.0, -CLOCK_OFFSET + 0.004):
        ref_idx, est_idx = associate_timestamps(ref.timestamps, est.timestamps, 0.01, offset)
        evo_ref, evo_est = _evo_pair(pair["gt"], pair["est"], offset)
        assert len(ref_idx) == evo_ref.num_poses == evo_est.num_poses
        np.testing.assert_array_equal(ref.timestamps[ref_idx], evo_ref.timestamps)
        np.testing.assert_array_equal(est.timestamps[est_idx], evo_est.timestamps)
    # the right offset associates almost every estimate pose (a few jittered ones fall beyond 10 ms)
    ref_idx, est_idx = associate_timestamps(ref.timestamps, est.timestamps, 0.01, -CLOCK_OFFSET)
    assert 500 <= len(ref_idx) <= 520
    assert np.abs(ref.timestamps[ref_idx] - (est.timestamps[est_idx] - CLOCK_OFFSET)).max() <= 0.01


@pytest.mark.parametrize("longer", ["reference", "estimate"])
def test_association_edge_cases_equal_evo(longer: str) -> None:
    """Ties (the earlier stamp wins), stamps outside the other range, the estimate as the longer one,
    several short stamps on one long stamp, and evo's linear search for unsorted stamps."""
    from evo.core.sync import matching_time_indices

    a = np.array([0.0, 0.01, 0.02, 0.03, 0.045, 0.05, 0.061, 0.07, 0.2])
    b = np.array([-0.02, 0.005, 0.015, 0.0251, 0.046, 0.0455, 0.3])
    for stamps_long, stamps_short in ((a, b), (a, b[np.argsort(-b)]), (np.sort(a)[::-1].copy(), b)):
        for offset in (0.0, 0.004, -0.0051):
            ref, est = (stamps_long, stamps_short) if longer == "reference" else (stamps_short, stamps_long)
            ref_idx, est_idx = associate_timestamps(ref, est, 0.008, offset)
            # evo walks the shorter trajectory; offset_2 applies to the estimate (negated on the reference)
            if longer == "reference":
                short_idx, long_idx = matching_time_indices(est.copy(), ref.copy(), 0.008, -offset)
                expected_ref, expected_est = long_idx, short_idx
            else:
                short_idx, long_idx = matching_time_indices(ref.copy(), est.copy(), 0.008, offset)
                expected_ref, expected_est = short_idx, long_idx
            assert ref_idx.tolist() == list(expected_ref) and est_idx.tolist() == list(expected_est)


def test_bad_association_options() -> None:
    with pytest.raises(InputError, match="--t-max-diff"):
        associate_timestamps(np.zeros(3), np.zeros(3), -1.0)
    with pytest.raises(InputError, match="--t-offset"):
        associate_timestamps(np.zeros(3), np.zeros(3), 0.01, float("nan"))


@pytest.mark.parametrize("align", ["sim3", "se3"])
def test_compare_reports_evo_ape_and_rpe(pair: dict, align: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = pair["tmp"] / f"report_{align}.json"
    code = main(["compare", "--reference", str(pair["gt"]), str(pair["est"]), "--align", align,
                 "--t-offset", str(-CLOCK_OFFSET), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    estimate = json.loads(out.read_text())["estimates"][0]
    evo_ref, evo_est = _evo_pair(pair["gt"], pair["est"], -CLOCK_OFFSET)
    assert estimate["matched_by"] == "timestamp" and estimate["num_matched"] == evo_ref.num_poses
    assert f"{evo_ref.num_poses} pose pairs associated by timestamp" in printed

    correct_scale = align == "sim3"
    ape = main_ape.ape(copy.deepcopy(evo_ref), copy.deepcopy(evo_est), evo_metrics.PoseRelation.translation_part,
                       align=True, correct_scale=correct_scale)
    translation = estimate["summary"]["stats"]["translation"]
    _assert_close(estimate["summary"]["ate_rmse"], ape.stats["rmse"], "APE rmse")
    _assert_close(translation["mean"], ape.stats["mean"], "APE mean")
    _assert_close(translation["median"], ape.stats["median"], "APE median")
    _assert_close(translation["max"], ape.stats["max"], "APE max")
    if correct_scale:
        assert estimate["summary"]["alignment"]["scale"] == pytest.approx(1 / 0.6, rel=0.01)

    for relation, key in ((evo_metrics.PoseRelation.translation_part, "rpe_translation"),
                          (evo_metrics.PoseRelation.rotation_angle_deg, "rpe_rotation_deg")):
        rpe = main_rpe.rpe(copy.deepcopy(evo_ref), copy.deepcopy(evo_est), relation, delta=1,
                           delta_unit=evo_metrics.Unit.frames, align=True, correct_scale=correct_scale)
        stats = estimate["summary"]["stats"][key]
        assert stats["count"] == len(rpe.np_arrays["error_array"])
        _assert_close(stats["rmse"], rpe.stats["rmse"], f"RPE {key} rmse")
        _assert_close(stats["mean"], rpe.stats["mean"], f"RPE {key} mean")
        _assert_close(stats["max"], rpe.stats["max"], f"RPE {key} max")
        np.testing.assert_allclose(estimate["rpe"][key.split("_", 1)[1]], rpe.np_arrays["error_array"], rtol=REL)


def test_no_pair_and_non_tum_sources_are_one_line(pair: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("posefix: error: ") and err.count("\n") == 1, err
        return err

    err = error(["compare", "--reference", str(pair["gt"]), str(pair["far"])])  # clock offset not given
    assert "estimate_far.txt: no pose within --t-max-diff 0.01 s" in err and "--t-offset 0 s" in err
    model = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny" / "sparse" / "0"
    err = error(["compare", "--reference", str(model), str(pair["est"]), "--match", "timestamp"])
    assert "is a COLMAP model, not a TUM trajectory" in err
    err = error(["compare", "--reference", str(pair["gt"]), str(pair["est"]), "--t-max-diff", "-1"])
    assert "--t-max-diff must be a finite number >= 0" in err


def test_posefix_named_tum_files_still_match_by_name(tmp_path: Path) -> None:
    """Files written by posefix (a names line) are matched by name under --match auto, and by timestamp
    when asked."""
    c2w = np.tile(np.eye(4), (5, 1, 1))
    c2w[:, 0, 3] = np.arange(5.0)
    c2w[:, 1, 3] = np.arange(5.0) ** 2
    write_tum(CameraSet(names=[f"im{i}.png" for i in range(5)], c2w=c2w), tmp_path / "a.tum", timestamps=np.arange(5.0))
    write_tum(CameraSet(names=[f"im{i}.png" for i in (4, 3, 2, 1, 0)], c2w=c2w[::-1]), tmp_path / "b.tum",
              timestamps=np.arange(5.0) + 100)
    from nerf_posefix.workflows.compare import compare

    by_name = compare(tmp_path / "a.tum", [tmp_path / "b.tum"], align="none").results[0]
    assert by_name.matched_by == "name" and len(by_name.match) == 5 and by_name.comparison.ate_rmse < 1e-12
    with pytest.raises(InputError, match="no pose within"):
        compare(tmp_path / "a.tum", [tmp_path / "b.tum"], align="none", match_by="timestamp")
    by_time = compare(tmp_path / "a.tum", [tmp_path / "b.tum"], align="none", match_by="timestamp", t_offset=-100).results[0]
    assert by_time.matched_by == "timestamp" and len(by_time.match) == 5 and by_time.comparison.ate_rmse > 1.0
