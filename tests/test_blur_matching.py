"""Blur-matched features (issue 22, :mod:`nerf_posefix.sfm.blur_matching`): the blur estimate, which frames are
rescued, and what the rescue writes into the track database (real pycolmap on the bundled toybox's images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from scene_helpers import blur_and_wash_out, frame_and_others_errors, toybox_views_one_blurred
from scipy.ndimage import gaussian_filter

from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.sfm import blur_matching as bm
from nerf_posefix.sfm.track_building import TrackOptions, match_features, reconstruction_from_poses, triangulate_fixed_poses

ROOT = Path(__file__).resolve().parents[1]
TOYBOX = ROOT / "assets" / "toybox"


def _texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """A random texture with a natural image's 1/f amplitude spectrum, 0-255."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / np.maximum(radius, 1.0 / size)
    image = np.real(np.fft.ifft2(spectrum))
    return 128.0 + 40.0 * (image - image.mean()) / image.std()


def test_gradient_energy_ignores_contrast_and_falls_with_blur() -> None:
    image = _texture()
    sharp = bm.gradient_energy(image)
    assert bm.gradient_energy(128 + 0.4 * (image - 128)) == pytest.approx(sharp, rel=1e-9)
    energies = [bm.gradient_energy(gaussian_filter(image, s)) for s in (1.0, 2.0, 4.0, 8.0)]
    assert sharp > energies[0] > energies[1] > energies[2] > energies[3]


@pytest.mark.parametrize("sigma", [3.0, 6.0, 12.0])
def test_the_blur_estimate_finds_the_sigma_of_a_blurred_washed_out_view(sigma: float) -> None:
    """A view of the same texture blurred by σ and cut to 40 % contrast, against two sharp neighbours (other crops of
    the texture): the estimate is within 20 % of σ, and its level the nearest; a sharp view estimates 0, no level."""
    texture = _texture(320)
    frame = gaussian_filter(texture, sigma)[32:288, 32:288]
    frame = 128 + 0.4 * (frame - 128)
    neighbours = [texture[0:256, 16:272], texture[48:304, 40:296]]
    estimate = bm.estimate_blur_sigma(frame, neighbours)
    print(f"sigma {sigma}: estimated {estimate:.2f}")
    assert estimate == pytest.approx(sigma, rel=0.2)
    level = bm.nearest_level(estimate)
    assert level is not None and abs(np.log(level / sigma)) <= np.log(2) / 2 + 0.2
    sharp = bm.estimate_blur_sigma(texture[20:276, 20:276], neighbours)
    assert sharp < 1.0 and bm.nearest_level(sharp) is None


def test_frames_to_rescue_are_linked_but_with_few_matches() -> None:
    counts = {"a": 2000, "b": 1800, "c": 2200, "d": 300, "e": 0, "f": 14, "g": 15, "h": 600}
    # median 1050 -> below a quarter (262.5): f and g; e and f have no verified pair (< 15)
    assert bm.frames_to_rescue(counts) == {"g": 15}
    assert bm.frames_to_rescue(counts, min_inliers=0) == {"e": 0, "f": 14, "g": 15}
    assert bm.frames_to_rescue({"a": 1, "b": 2}) == {}  # too few images to say what is few


def test_partners_are_the_nearest_cameras_facing_the_same_way() -> None:
    """By camera centre among those within 75 deg of the frame's optical axis (camera-to-world, OpenCV: +z looks
    forward), other rescued frames excluded; without poses, by name order."""
    names = ["0", "1", "2", "3", "4", "5"]
    c2w = np.tile(np.eye(4), (6, 1, 1))
    c2w[:, 0, 3] = [0.0, 1.0, 2.0, 0.5, -3.0, 0.2]
    c2w[5, :3, :3] = np.diag([1.0, -1.0, -1.0])  # looks backwards
    got = bm.nearest_partners(names, ["0", "1"], c2w, count=3)
    assert got == {"0": ["3", "2", "4"], "1": ["3", "2", "4"]}
    assert bm.nearest_partners(names, ["2"], None, count=3) == {"2": ["1", "3", "0"]}
    assert bm.nearest_partners(names, ["2"], c2w, count=2, among=["4", "5", "0"]) == {"2": ["0", "4"]}


def _observations(rec: "pycolmap.Reconstruction", name: str) -> int:
    image = next(im for im in rec.images.values() if im.name == name)
    return int(image.num_points3D)


def test_a_blurred_frame_gains_matches_and_tracks_and_the_sharp_tracks_are_kept(tmp_path: Path) -> None:
    """8 of the bundled scene's views, one blurred by 2 px and cut to 40 % contrast (49 verified matches against
    ~400 for the others): blur matching adds matches of that frame against its neighbours' blurred copies; the
    database stays consistent (a descriptor per keypoint, matches within the keypoints); the sharp pairs keep
    their own matches first, and what they gain joins appended keypoints only; triangulated with the true poses,
    the frame is seen by more points."""
    images = tmp_path / "images"
    posed, names, weak = toybox_views_one_blurred(images, 8, 2.0)
    cameras = {n: posed.intrinsics[n] for n in names}
    by_name = dict(zip(posed.cameras.names, posed.cameras.c2w))
    poses = CameraSet(names=names, c2w=np.stack([by_name[n] for n in names]))  # the true poses, camera-to-world
    plain, rescued = tmp_path / "plain.db", tmp_path / "rescued.db"
    match_features(images, names, cameras, plain, TrackOptions(blur_matching=False, num_threads=1), poses=poses)
    lines: list[str] = []
    summary = match_features(images, names, cameras, rescued, TrackOptions(num_threads=1), poses=poses, log=lines.append)
    before, after = bm.verified_inliers(plain), bm.verified_inliers(rescued)
    print(lines, before, after, summary.blur_matched)
    assert [f["name"] for f in summary.blur_matched] == [weak]
    assert summary.blur_matched[0]["inliers"] > 0 and after[weak] == before[weak] + summary.blur_matched[0]["inliers"]
    assert any("look blurred" in line for line in lines)
    assert not any(p.name.startswith(bm.SIDE_DIRECTORY) for p in tmp_path.iterdir())  # the side copies are gone

    def read(path: Path) -> tuple[dict[str, int], dict[str, int], dict[tuple[str, str], np.ndarray]]:
        db = pycolmap.Database.open(str(path))
        try:
            ids = {im.image_id: im.name for im in db.read_all_images()}
            keypoints = {ids[i]: int(db.num_keypoints_for_image(i)) for i in ids}
            descriptors = {ids[i]: int(db.num_descriptors_for_image(i)) for i in ids}
            pair_ids, geometries = db.read_two_view_geometries()
            matches = {}
            for pair_id, g in zip(pair_ids, geometries):
                a, b = pycolmap.pair_id_to_image_pair(pair_id)
                matches[(ids[a], ids[b])] = np.asarray(g.inlier_matches)
        finally:
            db.close()
        return keypoints, descriptors, matches

    k0, _, m0 = read(plain)
    k1, d1, m1 = read(rescued)
    assert k1 == d1
    assert all(k1[n] >= k0[n] for n in names) and k1[weak] > k0[weak]
    for (a, b), m in m1.items():
        assert m.size == 0 or (m[:, 0].max() < k1[a] and m[:, 1].max() < k1[b])
        if weak in (a, b) or m0[(a, b)].shape[0] < bm.MIN_PAIR_INLIERS:
            continue
        own = m0[(a, b)]
        np.testing.assert_array_equal(m[: own.shape[0]], own)
        added = m[own.shape[0]:]
        assert (added[:, 0] >= k0[a]).all() and (added[:, 1] >= k0[b]).all()

    def triangulated(path: Path) -> "pycolmap.Reconstruction":
        rec = reconstruction_from_poses(path, poses, cameras)
        return triangulate_fixed_poses(rec, path, images, 4.0, num_threads=1, colours=False)

    assert _observations(triangulated(rescued), weak) > _observations(triangulated(plain), weak)


def test_refine_holds_a_blurred_frame_with_blur_matched_tracks(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``posefix refine --poses`` on the bundled scene 3 deg / 5 % off with one view blurred by 2 px and cut to 40 %
    contrast: the summary and report.json say it was matched against its neighbours blurred alike, and the frame
    ends as close to the truth as the sharp ones (after a Sim(3) on all views)."""
    from nerf_posefix.cli.main import main
    from nerf_posefix.workflows.perturb import perturb_dataset

    data = tmp_path / "noisy"
    perturb_dataset(TOYBOX, data, rotation_deg=3.0, translation=0.05, seed=3)
    meta = json.loads((data / "transforms.json").read_text())
    weak = meta["frames"][20]["file_path"]
    blur_and_wash_out(data / weak, 2.0)
    out = tmp_path / "refined"
    code = main(["refine", "--poses", str(data / "transforms.json"), "--output", str(out), "--iterations", "0", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "blurred image(s) matched against their neighbours blurred alike" in captured.out
    matched = json.loads((out / "report.json").read_text())["summary"]["tracks_built"]["matches"]["blur_matched"]
    assert [Path(m["name"]).name for m in matched] == [Path(weak).name] and matched[0]["inliers"] > 0
    error, others = frame_and_others_errors(data, out, weak)
    print(f"blurred frame {error:.3f} deg, the others' median {others:.3f} deg")
    assert error < 3 * others and error < 0.3


def test_the_plugin_front_end_turns_blur_matching_on_and_off_as_refine() -> None:
    """``--pipeline.front-end-blur-matching`` reaches the front end's track options and its cache stamp (a cached
    front end made the other way is not reused), as ``posefix refine --no-blur-matching``; ``posefix refine`` and the
    plugin default to on."""
    from nerf_posefix.plugin.front_end import pipeline_front_end_options
    from nerf_posefix.plugin.training import in_process_config
    from nerf_posefix.workflows.refine import RefineOptions, front_end_options

    config = in_process_config("posefix-small", data=TOYBOX, output_dir=Path("unused"), max_iterations=0)
    on = pipeline_front_end_options(config.pipeline)
    config.pipeline.front_end_blur_matching = False
    off = pipeline_front_end_options(config.pipeline)
    assert on.track_options().blur_matching and not off.track_options().blur_matching
    assert on.stamp(built=True)["blur_matching"] is True and off.stamp(built=True)["blur_matching"] is False
    refine_on = front_end_options(RefineOptions(output=Path("unused"), poses=TOYBOX / "transforms.json"))
    refine_off = front_end_options(RefineOptions(output=Path("unused"), poses=TOYBOX / "transforms.json", blur_matching=False))
    assert refine_on.stamp(built=True)["blur_matching"] is True and refine_off.stamp(built=True)["blur_matching"] is False
    assert on.stamp(built=False)["blur_matching"] is None  # no tracks built: the option decides nothing
