"""Frames no image pair holds, placed against the held ones (:mod:`nerf_posefix.sfm.frame_placement`): the streak
model, which frames, and a placement on the bundled scene (real pycolmap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scene_helpers import TOYBOX, blur_and_wash_out, frame_and_others_errors

from nerf_posefix.sfm import blur_matching as bm
from nerf_posefix.sfm.frame_placement import BEYOND_CAP, place_blurred_frames, thinly_held_frames, unheld_frames


@pytest.mark.parametrize(("length", "angle_deg"), [(8.0, 0.0), (20.0, 17.0), (33.0, 115.0)])
def test_a_streak_is_a_centred_line_of_its_length_and_direction(length: float, angle_deg: float) -> None:
    kernel = bm.streak_kernel(length, np.deg2rad(angle_deg))
    n = kernel.shape[0]
    y, x = np.mgrid[:n, :n] - n // 2
    a = np.deg2rad(angle_deg)
    along, across = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    assert abs(kernel.sum() - 1.0) < 1e-12 and (kernel >= 0).all()
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)  # symmetric: smearing moves no feature
    assert float((kernel * along**2).sum()) == pytest.approx(length**2 / 12.0, rel=0.15)  # a uniform segment: L² / 12
    assert float((kernel * across**2).sum()) < 0.25  # a pixel wide
    image = np.zeros((64, 64))
    image[32, 32] = 1.0
    smeared = bm.smear_streak(image, length, a)
    assert smeared.sum() == pytest.approx(1.0) and smeared[32, 32] == pytest.approx(kernel.max(), rel=1e-6)


@pytest.mark.parametrize("angle_deg", [30.0, 75.0, 135.0])
def test_a_streaks_direction_is_ranked_first_among_the_choices_directions(angle_deg: float) -> None:
    """A bundled view (128 px) smeared by a 16 px streak, against two other views (its neighbours, sharp): the
    streak's direction is among the two along which it is smoothest relative to them (the coarse choice tries
    :data:`~nerf_posefix.sfm.blur_matching.CHOICE_RANKED_DIRECTIONS` of them), and its mirror image (x towards y,
    rows down: 180 deg minus it) is not."""
    from nerf_posefix.io.posed_images import load_posed_images

    posed = load_posed_images(TOYBOX / "transforms.json")
    names = list(posed.cameras.names)
    gray = {n: bm._gray(posed.images_dir / n) for n in names[:3]}  # noqa: SLF001
    smeared = bm.smear_streak(gray[names[0]], 16.0, np.deg2rad(angle_deg))
    angles = np.arange(bm.CHOICE_DIRECTIONS) * (np.pi / bm.CHOICE_DIRECTIONS)
    ratios = bm.streak_direction_ratios(smeared, [gray[names[1]], gray[names[2]]], angles)
    assert ratios.shape == (bm.CHOICE_DIRECTIONS,) and (ratios < 1.0).all()  # smoother than its neighbours everywhere
    true, mirror = (int(round(a / (180.0 / bm.CHOICE_DIRECTIONS))) % bm.CHOICE_DIRECTIONS for a in (angle_deg, 180.0 - angle_deg))
    assert true in np.argsort(ratios)[:2] and ratios[mirror] > ratios[true] + 0.03, np.round(ratios, 3)
    unsmeared = bm.streak_direction_ratios(gray[names[0]], [gray[names[1]], gray[names[2]]], angles)
    assert unsmeared.max() / unsmeared.min() < ratios.max() / ratios.min()  # the streak makes it anisotropic


def test_unheld_frames_have_no_verified_pair_few_tracks_or_another_group() -> None:
    inliers = {"a": 900, "b": 0, "c": 14, "d": 15, "e": 800, "f": 700}
    observations = {"a": 400, "b": 0, "c": 0, "d": 40, "e": 29, "f": 300}
    assert unheld_frames(inliers, observations, {"a", "d", "e"}) == ["b", "c", "e", "f"]  # f: a group of its own
    assert unheld_frames(inliers, observations, set(observations)) == ["b", "c", "e"]
    assert unheld_frames({"a": 0, "b": 0}, {"a": 0, "b": 0}, set()) == []  # too few images to place anything against


def test_thinly_held_frames_are_in_the_largest_group_with_few_observations() -> None:
    """Below a quarter of the median image's observations (here 380: below 95), at least the 30 a held image needs,
    and in the largest group; the others are unheld (:func:`unheld_frames`) or well held."""
    observations = {"a": 400, "b": 420, "c": 90, "d": 95, "e": 30, "f": 29, "g": 60, "h": 380, "i": 390, "j": 405, "k": 410}
    assert thinly_held_frames(observations, set(observations) - {"g"}) == ["c", "e"]
    assert thinly_held_frames(observations, set(observations), fraction=0.1) == ["e"]  # below 38
    assert thinly_held_frames({"a": 1, "b": 400}, {"a", "b"}) == []  # too few images


def _smear_and_wash_out(path: Path, length: float, angle_deg: float, contrast: float = 0.4) -> None:
    """The image at ``path`` smeared along a streak (an independent model: points every 0.1 px along the segment,
    bilinear) and its contrast cut, rewritten in place."""
    import imageio.v3 as iio
    from scipy.ndimage import shift

    pixels = iio.imread(path).astype(np.float64)[..., :3]
    a = np.deg2rad(angle_deg)
    steps = np.linspace(-length / 2.0, length / 2.0, int(10 * length) + 1)
    smeared = np.mean([shift(pixels, (t * np.sin(a), t * np.cos(a), 0.0), order=1, mode="nearest") for t in steps], axis=0)
    mean = smeared.mean(axis=(0, 1))
    path.unlink()
    iio.imwrite(path, np.clip(np.rint(mean + contrast * (smeared - mean)), 0, 255).astype(np.uint8))


def test_a_smeared_frame_without_pairs_is_placed_and_the_others_do_not_move(tmp_path: Path) -> None:
    """24 bundled views (128 px), one smeared along a 12 px streak at 60 deg and cut to 40 % contrast (no verified pair
    left), its pose 3 deg off, another blurred beyond matching; the others at the truth: the placement finds the
    streak's direction, registers the frame within a fraction of its error, holds it, leaves the other one unplaced,
    and leaves the reconstruction it was given untouched."""
    from nerf_posefix.geometry.poses import rotation_angle_deg
    from nerf_posefix.io.camera_set import CameraSet
    from nerf_posefix.io.posed_images import load_posed_images
    from nerf_posefix.sfm.track_building import (
        TrackOptions, match_features, reconstruction_from_poses, triangulate_fixed_poses,
    )

    posed = load_posed_images(TOYBOX / "transforms.json")
    names = list(posed.cameras.names[:24])
    images = tmp_path / "images"
    for n in names:
        (images / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(posed.images_dir / n, images / n)
    weak, lost = names[12], names[5]
    _smear_and_wash_out(images / weak, 12.0, 60.0)
    blur_and_wash_out(images / lost, 24.0, 0.2)  # nothing left to match: not placed, and no error
    cameras = {n: posed.intrinsics[n] for n in names}
    by_name = dict(zip(posed.cameras.names, posed.cameras.c2w))
    truth = np.stack([by_name[n] for n in names])  # [N, 4, 4] camera-to-world, OpenCV
    start = truth.copy()
    axis = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    from scipy.spatial.transform import Rotation

    start[12, :3, :3] = Rotation.from_rotvec(np.deg2rad(3.0) * axis).as_matrix() @ truth[12, :3, :3]
    database = tmp_path / "database.db"
    match_features(images, names, cameras, database, TrackOptions(blur_matching=False, num_threads=2),
                   poses=CameraSet(names=names, c2w=truth))
    assert [n for n, k in bm.verified_inliers(database).items() if k < bm.MIN_PAIR_INLIERS] == [lost, weak]
    rec = triangulate_fixed_poses(reconstruction_from_poses(database, CameraSet(names=names, c2w=start), cameras), database,
                                  images, 2.0, num_threads=2, colours=False)
    before = {im.name: np.asarray(im.cam_from_world().matrix()) for im in rec.images.values()}
    lines: list[str] = []
    # 128 px views: a placed frame has ~70 observations here, below the default bar for castle-sized images
    placement = place_blurred_frames(database, images, rec, cameras, tmp_path / "work", num_threads=2, log=lines.append,
                                    min_observations=30)
    print("\n".join(lines))
    [other, frame] = placement.frames
    assert other.name == lost and not other.registered and not other.held and lost not in placement.cam_from_world
    assert other.reason.startswith("few matches even blurred alike") and other.pairs == 0  # neither matched nor registered
    assert frame.name == weak and frame.inliers_before < bm.MIN_PAIR_INLIERS
    assert frame.blur["streak_px"] > 0 and min(abs(frame.blur["angle_deg"] - 60.0), 180 - abs(frame.blur["angle_deg"] - 60.0)) <= 15.0
    assert frame.registered and frame.held and frame.pairs >= 3
    assert placement.support[weak].placed and not placement.support[weak].weak
    placed_c2w = np.linalg.inv(placement.cam_from_world[weak])
    error = float(rotation_angle_deg(placed_c2w[None, :3, :3], truth[12:13, :3, :3])[0])
    print(f"placed {error:.3f} deg from 3 deg")
    assert error < 0.5, error  # from 3 deg
    assert {im.name: np.asarray(im.cam_from_world().matrix()) for im in rec.images.values()}.keys() == before.keys()
    for im in rec.images.values():
        np.testing.assert_array_equal(np.asarray(im.cam_from_world().matrix()), before[im.name])
    assert not (tmp_path / "work" / "placement.db").exists() and not any((tmp_path / "work").glob("blur_*"))
    # capped at one frame: the less blurred one is placed alike, the other is not tried
    capped = place_blurred_frames(database, images, rec, cameras, tmp_path / "work", num_threads=2, min_observations=30, max_frames=1)
    [other, frame] = capped.frames
    assert other.reason == f"{BEYOND_CAP} of 1 frames" and other.choice_inliers == 0 and other.seconds == 0.0
    assert frame.held and list(capped.cam_from_world) == [weak]


def test_refine_places_a_smeared_frame_and_counts_it_held(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """``posefix refine --poses`` on the bundled scene 3 deg / 5 % off with one view smeared along a 12 px streak and
    cut to 40 % contrast (no verified pair): the summary and report.json say it was placed and is held (so the
    default runs no NeRF stage for it), and it ends within a few times the sharp views' error (after a Sim(3) on
    all views), from 3 deg. The bar of observations for a placed frame is lowered to 30 for these 128 px views (34
    observations; with the default bar such frames are left to the NeRF stage:
    tests/test_track_building.py, test_weakly_held_images_start_the_nerf_stage_with_a_wide_prior)."""
    import json

    from nerf_posefix.cli.main import main
    from nerf_posefix.sfm import frame_placement
    from nerf_posefix.workflows.perturb import perturb_dataset

    monkeypatch.setattr(frame_placement, "PLACED_MIN_OBSERVATIONS", 30)

    data = tmp_path / "noisy"
    perturb_dataset(TOYBOX, data, rotation_deg=3.0, translation=0.05, seed=3)
    meta = json.loads((data / "transforms.json").read_text())
    weak = meta["frames"][20]["file_path"]
    _smear_and_wash_out(data / weak, 12.0, 60.0)
    out = tmp_path / "refined"
    code = main(["refine", "--poses", str(data / "transforms.json"), "--output", str(out), "--threads", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 of 1 blurred image(s) the adjustment held weakly or not at all" in captured.out and "64 of 64 images, 1 of them placed" in captured.out
    report = json.loads((out / "report.json").read_text())
    ba = report["summary"]["bundle_adjustment"]
    [frame] = ba["placement"]["frames"]
    assert Path(frame["name"]).name == Path(weak).name and frame["held"] and frame["inliers_before"] < 15
    assert ba["images"][frame["name"]]["placed"] and not ba["images"][frame["name"]]["weak"]
    assert ba["support"]["num_weak"] == 0 and ba["support"]["num_placed"] == 1 and "warning" not in ba and not report["summary"].get("iterations")  # no NeRF stage needed
    error, others = frame_and_others_errors(data, out, weak)
    print(f"smeared frame {error:.3f} deg, the others' median {others:.3f} deg")
    assert error < 4 * others and error < 0.3


def test_a_placed_frame_is_held_with_enough_tracks_and_an_uncertainty_within_half_a_degree() -> None:
    from nerf_posefix.sfm.frame_placement import PLACED_MAX_SIGMA_DEG, PLACED_MIN_OBSERVATIONS, placed_frame_held
    from nerf_posefix.sfm.support import ImageSupport

    focal = 700.0
    limit_px = focal * np.tan(np.deg2rad(PLACED_MAX_SIGMA_DEG))  # ~6.1 px
    held = ImageSupport("a", 400, 0, 0.01, 0.01, 0.1, 0.3)
    assert placed_frame_held(held, focal) == (True, "")
    uncertain = ImageSupport("b", 200, 0, 0.1, 0.1, 0.9 * limit_px, 0.5, weak=True, reason="uncertain pose (4 px > 10 x ...)")
    assert placed_frame_held(uncertain, focal) == (True, "")  # a blurred frame's few hundred observations: held
    too_uncertain = ImageSupport("c", 200, 0, 0.1, 0.1, 1.1 * limit_px, 0.5, weak=True, reason="uncertain pose (7 px > ...)")
    assert placed_frame_held(too_uncertain, focal)[0] is False
    few = ImageSupport("d", PLACED_MIN_OBSERVATIONS - 1, 0, 0.01, 0.01, 0.1, 0.5)  # certain, but on too few tracks
    assert placed_frame_held(few, focal) == (False, f"few placed tracks ({PLACED_MIN_OBSERVATIONS - 1} observations < "
                                                    f"{PLACED_MIN_OBSERVATIONS})")
    assert placed_frame_held(few, focal, min_observations=30) == (True, "")
    apart = ImageSupport("e", 400, 1, 0.01, 0.01, 0.1, 0.3, weak=True, reason="not linked by tracks to the largest group")
    assert placed_frame_held(apart, focal) == (False, apart.reason)
    # a frame the adjustment held by few tracks: placed on more observations than it had there, or it keeps its pose
    assert placed_frame_held(held, focal, observations_before=399) == (True, "")
    assert placed_frame_held(held, focal, observations_before=400) == (
        False, "no better held than by the adjustment (400 <= 400 observations)")


def test_the_plugin_and_refine_turn_frame_placement_on_and_off_alike() -> None:
    """``--pipeline.front-end-frame-placement`` and ``posefix refine --no-frame-placement`` reach the front end and its
    cache stamp (a front end cached the other way is not reused); both default to on."""
    from nerf_posefix.plugin.front_end import pipeline_front_end_options
    from nerf_posefix.plugin.training import in_process_config
    from nerf_posefix.workflows.refine import RefineOptions, front_end_options

    config = in_process_config("posefix-small", data=TOYBOX, output_dir=Path("unused"), max_iterations=0)
    on = pipeline_front_end_options(config.pipeline)
    config.pipeline.front_end_frame_placement = False
    off = pipeline_front_end_options(config.pipeline)
    assert on.frame_placement and not off.frame_placement
    config.pipeline.front_end_placement_max_frames = 7
    assert pipeline_front_end_options(config.pipeline).placement_max_frames == 7
    assert front_end_options(RefineOptions(output=Path("unused"), poses=TOYBOX / "transforms.json", placement_max_frames=7)).placement_max_frames == 7
    assert on.stamp(built=True)["frame_placement"] is True and off.stamp(built=True)["frame_placement"] is False
    refine_on = front_end_options(RefineOptions(output=Path("unused"), poses=TOYBOX / "transforms.json"))
    refine_off = front_end_options(RefineOptions(output=Path("unused"), poses=TOYBOX / "transforms.json", frame_placement=False))
    assert refine_on.frame_placement and not refine_off.frame_placement
    assert on.stamp(built=False)["frame_placement"] is None  # no tracks built: nothing to place


def test_refine_refuses_a_negative_placement_cap_before_writing(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from cli_helpers import refused

    out = tmp_path / "out"
    refused(capsys, "refine", "--poses", TOYBOX / "transforms.json", "--output", out, "--placement-max-frames", "-1",
            says=("--placement-max-frames must be >= 0, got -1",))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_plugins_front_end_refuses_a_negative_placement_cap(tmp_path: Path) -> None:
    """``--pipeline.front-end-placement-max-frames -1``: the same refusal as refine's, before the front end runs."""
    from nerf_posefix.errors import InputError
    from nerf_posefix.plugin.front_end import training_dataparser
    from nerf_posefix.plugin.training import in_process_config

    config = in_process_config("posefix-small", data=TOYBOX, output_dir=tmp_path, max_iterations=0)
    config.pipeline.front_end_placement_max_frames = -1
    config.pipeline.front_end_cache = tmp_path / "front_end"
    with pytest.raises(InputError, match="--placement-max-frames must be >= 0, got -1"):
        training_dataparser(config.pipeline)
    assert not (tmp_path / "front_end" / "result.json").exists()
