"""Plotting: small matplotlib helpers shared by notebooks and slides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from course_utils import PROJECT_ROOT

if TYPE_CHECKING:  # names used only in annotations; the functions import them when called
    import matplotlib.figure

FIGURES_DIR: Path = PROJECT_ROOT / "slides" / "figures"
#: Where the notebooks save their figures unless told otherwise (ignored by git).
BUILD_FIGURES_DIR: Path = PROJECT_ROOT / "build" / "figures"


def savefig(fig: "matplotlib.figure.Figure", name: str, dpi: int = 100) -> Path:
    """Save ``fig`` as ``<name>.png`` in ``$WORKBOOK_FIGURES_DIR``, by default ``build/figures/`` (not committed).

    Only ``make notebooks`` points it at ``slides/figures/``, the lecture decks' copies of the notebooks' plots: a
    student running a notebook in Lab, the runner and nbval leave the committed figures alone."""
    import os

    folder = Path(os.environ.get("WORKBOOK_FIGURES_DIR") or BUILD_FIGURES_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
) -> "matplotlib.figure.Figure":
    """Plot named ``(x, y)`` curves on one axis and return the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
