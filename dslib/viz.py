"""The few plotting helpers every chapter shares."""
from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.rcParams.update({"figure.figsize": (7.0, 4.0), "axes.grid": True, "grid.alpha": 0.3})


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 7.0, height: float = 4.0) -> tuple[Any, Any]:
    """A figure and its axes, sized per panel."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=ncols * nrows == 1)
