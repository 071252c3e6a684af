#!/usr/bin/env python
r"""Time :func:`nerf_posefix.sfm.support.image_support` on a COLMAP model (issues 22, 23).

One model per run, one process: reads the model, times ``image_support`` (wall clock) and prints one JSON
line (images, observations, seconds, the process's peak resident memory, medians of σ rotation, σ px and
the residual, number of weak images). ``--module FILE`` times another copy of the module instead (an older
version, to measure before/after on the same machine)::

    python -m benchmarks.synthetic_model --images 1000 --output /tmp/synth1000 --no-image-files
    nice -n 10 python -m benchmarks.support_timing /tmp/synth1000/sparse/0
    git show COMMIT:nerf_posefix/sfm/support.py > /tmp/support_old.py
    nice -n 10 python -m benchmarks.support_timing /tmp/synth1000/sparse/0 --module /tmp/support_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="COLMAP model directory (cameras, images, points3D)")
    parser.add_argument("--module", type=Path, help="a support.py to time instead of the installed one")
    args = parser.parse_args(argv)
    import pycolmap

    if args.module is not None:
        spec = importlib.util.spec_from_file_location("support_under_test", args.module)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    else:
        from nerf_posefix.sfm import support as module
    rec = pycolmap.Reconstruction(str(args.model))
    t0 = time.perf_counter()
    support = module.image_support(rec)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "module": str(module.__file__),
        "images": len(support),
        "observations": int(sum(s.observations for s in support)),
        "seconds": round(seconds, 2),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "median_sigma_rotation_deg": float(np.median([s.sigma_rotation_deg for s in support])),
        "median_sigma_px": float(np.median([s.sigma_px for s in support])),
        "median_residual_px": float(np.median([s.residual_px for s in support])),
        "num_weak": sum(s.weak for s in support),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
