"""Pictures of one trial for the dashboard: confusion matrix and per-class accuracy, as PNG.

Drawn on matplotlib's Agg canvas directly (no pyplot), so no global figure state is shared
between threads and nothing needs a display.
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def confusion_png(cm: list[list[int]], title: str) -> bytes:
    """Row-normalised confusion matrix (true class down, prediction across); counts written in
    the cells when there are at most 20 classes."""
    c = len(cm)
    size = min(12.0, 3.0 + 0.45 * c)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    rates = [[v / max(1, sum(row)) for v in row] for row in cm]
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if c <= 20:
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if rates[i][j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def per_class_png(per_class: list[float | None], train_counts: list[int], title: str) -> bytes:
    """Accuracy per class (bars, classes in index order, class 0 the head) over the training
    count per class (line, log scale). A class with no accuracy (None) is marked "n/a"."""
    c = len(per_class)
    fig = Figure(figsize=(min(16.0, 4.0 + 0.3 * c), 4.0))
    ax = fig.add_subplot()
    heights = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v
               for v in per_class]
    ax.bar(range(c), heights, color="tab:blue", label="accuracy")
    for i, v in enumerate(per_class):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    if train_counts:
        twin = ax.twinx()
        twin.plot(range(len(train_counts)), [max(1, n) for n in train_counts], color="tab:red",
                  marker=".", label="training images")
        twin.set_yscale("log")
        twin.set_ylabel("training images", color="tab:red")
    fig.tight_layout()
    return _png(fig)
