"""Floor 1 of 5: the maths of camera poses (numpy / scipy / torch only; never a file, nerfstudio or a CLI).

* :mod:`~nerf_posefix.geometry.poses`: pose conventions (camera-to-world / world-to-camera, OpenGL /
  OpenCV axes, COLMAP and TUM rows, 4x4 padding, rotation checks).
* :mod:`~nerf_posefix.geometry.homography`: the homography pose error and its depth bounds.
* :mod:`~nerf_posefix.geometry.preconditioning`: the closed-form pose metric and the preconditioner.
* :mod:`~nerf_posefix.geometry.alignment`: Umeyama alignment (SE(3), Sim(3), trimmed).
* :mod:`~nerf_posefix.geometry.metrics`: pose-error metrics (aligned errors, ATE, RPE, recall, AUC).
* :mod:`~nerf_posefix.geometry.noise`: seeded pose noise.
* :mod:`~nerf_posefix.geometry.reprojection`: COLMAP camera models, reprojection residuals of SfM
  observations through camera-to-world poses, robust losses (Ceres' definitions).
* :mod:`~nerf_posefix.geometry.pixel_prior`: the homography prior as a mean squared pixel displacement.
"""
