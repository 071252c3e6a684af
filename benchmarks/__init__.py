"""Benchmarks, scene generation and SfM helpers: not installed with the package.

Run from the repository root as modules, e.g. ``python -m benchmarks.noisy_pose --quick``; tests
import them as a package (``from benchmarks import make_scene``). They use the package's workflows
and lower floors, never its CLI.
"""
