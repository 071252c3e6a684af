"""Floor 4 of 5: what each command does, as plain functions with plain arguments that return results.

No argument parsing and no printing beyond progress; :mod:`nerf_posefix.cli` parses, calls one of
these and prints. Imports the floors below (geometry, io, plugin).
"""
