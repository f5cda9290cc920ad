"""PNG figures for reports (matplotlib without a display)."""

from __future__ import annotations

import numpy as np

from embedder.kernel.atomic import atomic_path


def _save(fig, path: str, dpi: int) -> None:
    """A figure as a whole PNG or none (a full disk, Ctrl-C: no truncated image left behind)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(draw):
    """Every string drawn as itself: a class named ``$x^{$`` is a label, not math text (which would fail to parse,
    or draw something else), and never LaTeX."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.usetex": False, "text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


@_plain_text
def confusion_png(matrix: np.ndarray, classes: list[str], title: str, path: str) -> str:
    """Rows normalized to recall (colour), with the raw counts written in each cell."""
    plt = _pyplot()
    k = len(classes)
    size = min(4 + 0.45 * k, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    _save(fig, path, 120)
    plt.close(fig)
    return path


@_plain_text
def leaderboard_png(
    names: list[str], means: list[float], stds: list[float], metric: str, path: str, title: str = ""
) -> str:
    """Horizontal bars, best on top, with ± one standard deviation over folds; ``title``: what they were measured
    on (the picture travels alone)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1 + 0.35 * len(names)))
    order = list(range(len(names)))[::-1]
    ax.barh(
        [names[i] for i in order],
        [means[i] for i in order],
        xerr=[stds[i] for i in order],
        color="#4c72b0",
        ecolor="black",
        capsize=3,
    )
    low = max(0.0, min(m - s for m, s in zip(means, stds)) - 0.05)
    ax.set_xlim(low, 1.0)
    ax.set_xlabel(f"{metric.replace('_', ' ')} (mean ± std over folds)")
    ax.tick_params(axis="y", labelsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path, 120)
    plt.close(fig)
    return path


@_plain_text
def map_png(xy: np.ndarray, y: np.ndarray, classes: list[str], wrong: np.ndarray, title: str, path: str) -> str:
    """A 2-D map of the images, one colour per class (the label); the misclassified ones drawn as larger
    crosses on top, so that the mixing of classes shows at a glance."""
    plt = _pyplot()
    k = len(classes)
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    size = 14 if len(y) <= 3000 else 6
    for c in range(k):
        here = (y == c) & ~wrong
        ax.scatter(
            xy[here, 0],
            xy[here, 1],
            s=size,
            color=colours(c % colours.N),
            alpha=0.75,
            linewidths=0,
            label=classes[c] if k <= 20 else None,
        )
    for c in range(k):
        here = (y == c) & wrong
        ax.scatter(
            xy[here, 0],
            xy[here, 1],
            s=2.5 * size,
            color=colours(c % colours.N),
            marker="X",
            edgecolors="black",
            linewidths=0.4,
        )
    ax.scatter(
        [],
        [],
        s=2.5 * size,
        color="white",
        marker="X",
        edgecolors="black",
        linewidths=0.4,
        label="misclassified (colour: its label)",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5)
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)
    return path


def training_curves(history: list[dict]):
    """The figure of a training run: loss and accuracy per epoch, training (augmented) and validation. Epoch 0, the
    untrained start, has validation values only."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    value = lambda h, k: float("nan") if h[k] is None else h[k]  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [value(h, "train_loss") for h in history], marker="o", label="train")
    left.plot(epochs, [value(h, "val_loss") for h in history], marker="o", label="validation")
    left.set_title("cross-entropy loss")
    right.plot(epochs, [value(h, "train_accuracy") for h in history], marker="o", label="train (augmented)")
    right.plot(epochs, [value(h, "val_accuracy") for h in history], marker="o", label="validation")
    right.set_title("accuracy")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def training_curves_png(history: list[dict], path: str) -> str:
    plt = _pyplot()
    fig = training_curves(history)
    _save(fig, path, 110)
    plt.close(fig)
    return path
