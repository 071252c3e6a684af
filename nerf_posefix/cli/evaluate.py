"""``posefix evaluate``: parse, call :func:`nerf_posefix.workflows.evaluate.evaluate`, print a table."""

from __future__ import annotations

from dataclasses import dataclass

from nerf_posefix.workflows.evaluate import EvaluateOptions


@dataclass
class Evaluate(EvaluateOptions):
    """Held-out rendering quality of several pose sets of one capture, measured as the field does: for
    each set a fresh NeRF is trained with the poses frozen, and the held-out views (every k-th image, the
    same for all sets) are scored at their given poses and after test-pose alignment (each held-out pose
    optimised against the frozen model with a fixed budget, CamP's 200 Adam steps at lr 1e-3 by default).
    Writes evaluation.json, evaluation.csv, per_view.csv and per_view_psnr.png."""

    def run(self) -> None:
        from rich.console import Console
        from rich.table import Table

        from nerf_posefix.workflows.evaluate import evaluate

        console = Console(width=160, stderr=False)
        result = evaluate(self, log=console.print)
        table = Table(title=f"held-out views ({len(result.held_out)} of {len(result.held_out) + len(result.train)})")
        for header in ("set", "PSNR given", "PSNR aligned", "SSIM given", "SSIM aligned",
                       "test-pose corr. (deg)", "test-pose corr. (% radius)", "train (s)"):
            table.add_column(header, justify="left" if header == "set" else "right")
        for r in result.sets:
            table.add_row(
                r["label"],
                _f(r.get("psnr_before"), 2), _f(r.get("psnr_after"), 2),
                _f(r.get("ssim_before"), 3), _f(r.get("ssim_after"), 3),
                _f(r.get("rotation_median_deg"), 3), _f(r.get("translation_pct_median"), 2),
                _f(r.get("training_seconds"), 0),
            )
        console.print(table)
        console.print("median test-pose correction over the held-out views; PSNR/SSIM: means")
        for path in result.files.values():
            console.print(f"wrote {path}")


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
