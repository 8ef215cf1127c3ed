"""Figures. The only jaxviz module that imports matplotlib, and only when drawing.

Every function takes numpy arrays, draws into ``fig`` (a multi-panel
figure) or ``ax`` (a single panel) when given, and returns the
``matplotlib.figure.Figure``. New figures are made with
``matplotlib.figure.Figure``, not pyplot: no global state, no backend
needed, and nothing is ever shown (``plt.show()`` is the caller's choice).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxviz.checks import ArgumentError

__all__ = [
    "MAX_COLUMNS", "MAX_ROWS", "check_grid", "image_title", "plot_activation_maps", "plot_attribution_maps", "plot_confusion", "plot_filters", "plot_heatmaps", "plot_masked",
    "plot_looks_for", "plot_occluded_examples", "plot_sanity", "plot_selectivity", "plot_top_k", "plot_training",
    "plot_tsne", "plot_visualizations", "save_figure",
]


# A grid figure past these sizes is unreadable and slow to draw (hundreds of panels
# take minutes and gigabytes): refuse it and say how to ask for less.
MAX_COLUMNS = 16
MAX_ROWS = 32


def check_grid(rows: int, cols: int, *, what_rows: str, what_cols: str) -> None:
    """Raise ``ValueError`` for a panel grid too large to read (see ``MAX_ROWS``/``MAX_COLUMNS``)."""
    if cols > MAX_COLUMNS:
        raise ArgumentError(f"{what_cols}", f"a figure shows at most {MAX_COLUMNS} {what_cols} side by side, "
                         f"got {cols}; pass fewer")
    if rows > MAX_ROWS:
        raise ArgumentError(f"{what_rows}", f"a figure shows at most {MAX_ROWS} rows of {what_rows}, got {rows}; pass fewer")


def image_title(prefix: str = "", *, true: str | None = None, predicted: str | None = None,
                explained: str | None = None, sep: str = " / ") -> str:
    """A panel title for an image: ``prefix``, then "true: cat / pred: dog / <explained>", leaving out the
    parts that are None, so that a predicted class never reads as the label; ``sep="\n"`` stacks the parts
    (a row label beside a small image)."""
    parts = [f"true: {true}" if true is not None else None, f"pred: {predicted}" if predicted is not None else None,
             explained]
    return prefix + sep.join(p for p in parts if p)


def _figure(fig, figsize):
    if fig is not None:
        return fig
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _axes_grid(fig, rows: int, cols: int):
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def _column_title(unit) -> str:
    """An int is a unit number ("unit 7"); anything else is used as given."""
    return f"unit {unit}" if isinstance(unit, (int, np.integer)) else str(unit)


def _show(ax, image, **kwargs):
    """``ax.imshow(image)``; a 1-channel (H, W, 1) image in grayscale (uint8: 0 black, 255 white)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
        kwargs.setdefault("cmap", "gray")
        if image.dtype == np.uint8:
            kwargs.setdefault("vmin", 0)
            kwargs.setdefault("vmax", 255)
    return ax.imshow(image, **kwargs)


def _single(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = _figure(None, figsize)
    return fig, fig.add_subplot()


def save_figure(fig, path, *, dpi: int = 110) -> None:
    """Write ``fig`` as PNG atomically (temporary name, then rename)."""
    from jaxviz._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def plot_filters(cells: np.ndarray, filled: np.ndarray, *, title: str = "", fig=None):
    """Kernel grid from ``jaxviz.filter_grid``: (rows, cols, kh, kw, 3), blank cells white."""
    rows, cols = filled.shape
    fig = _figure(fig, (1.0 * cols + 0.5, 1.0 * rows + 0.6))
    axes = _axes_grid(fig, rows, cols)
    for i in range(rows):
        for j in range(cols):
            _show(axes[i, j], cells[i, j], interpolation="nearest", vmin=0, vmax=1)
            axes[i, j].axis("on" if filled[i, j] else "off")
    if title:
        fig.suptitle(title)
    return fig


def plot_activation_maps(images: np.ndarray, maps: np.ndarray, *, channels: Sequence[int] | None = None,
                         layer: str = "", fig=None):
    """Images (left column) and their feature maps for chosen channels.

    Args:
      images: uint8 (N, H, W, 3).
      maps: float (N, h, w, C) activations of a conv layer.
      channels: channels to show (default the first 8).
    """
    channels = list(range(min(8, maps.shape[-1]))) if channels is None else [int(c) for c in channels]
    if not channels or min(channels) < 0 or max(channels) >= maps.shape[-1]:
        raise ArgumentError("channels", f"expected channel indices in [0, {maps.shape[-1]}) of layer {layer or 'the layer'}, "
                         f"got {channels}")
    n = len(images)
    check_grid(n, len(channels) + 1, what_rows="images", what_cols="channels")
    fig = _figure(fig, (1.3 * (len(channels) + 1), 1.4 * n + 0.5))
    axes = _axes_grid(fig, n, len(channels) + 1)
    for i in range(n):
        _show(axes[i, 0], images[i])
        for j, c in enumerate(channels):
            axes[i, j + 1].imshow(maps[i, ..., c], cmap="viridis")
            if i == 0:
                axes[0, j + 1].set_title(f"ch {c}", fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    fig.suptitle(f"Activation maps of {layer} (bright = strong)" if layer else "Activation maps")
    return fig


def plot_top_k(images: np.ndarray, units: Sequence[int], *, labels: np.ndarray | None = None,
               class_names: Sequence[str] | None = None, title: str = "", fig=None):
    """The notebook's ``vis_topk``: column j holds the top images of ``units[j]``.

    Args:
      images: uint8 (K, units, H, W, 3), best first.
      units: unit numbers (titled "unit N") or strings, one per column.
      labels: optional int (K, units) classes, shown under each image.
    """
    k, u = images.shape[:2]
    check_grid(k, u, what_rows="top images (k)", what_cols="units")
    # at least as wide as the title (a figure of one or two units clipped it)
    fig = _figure(fig, (max(1.25 * u + 0.3, 0.09 * len(title)), 1.3 * k + 0.6))
    axes = _axes_grid(fig, k, u)
    for i in range(k):
        for j in range(u):
            _show(axes[i, j], images[i, j])
            if labels is not None and class_names is not None:
                axes[i, j].set_xlabel(class_names[labels[i, j]], fontsize=6, labelpad=1)
    for j, unit in enumerate(units):
        axes[0, j].set_title(_column_title(unit), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_looks_for(pictures: np.ndarray, top_images: np.ndarray, units: Sequence[int], *,
                   notes: Sequence[str] | None = None, labels: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None, title: str = "", fig=None):
    """Each unit's feature visualization above its top-K images: one column per unit.

    Args:
      pictures: uint8 (U, H, W, 3): each unit's picture (``UnitVisualizations.visualization.images[:, 0]``).
      top_images: uint8 (K, U, H, W, 3): the unit's top images of the data, best first.
      units: the unit numbers (titled "unit N") or strings, one per column.
      notes: optional text under each picture (its exemplar ratio and predicted class).
      labels: optional int (K, U) classes of the top images, shown under each.
    """
    stacked = np.concatenate([np.asarray(pictures)[None], np.asarray(top_images)])
    fig = plot_top_k(stacked, units, title=title, fig=fig)
    axes = np.asarray(fig.axes[:stacked.shape[0] * stacked.shape[1]]).reshape(stacked.shape[:2])
    for j in range(stacked.shape[1]):
        if notes is not None:
            axes[0, j].set_xlabel(notes[j], fontsize=6, labelpad=1, fontweight="bold")
        if labels is not None and class_names is not None:
            for i in range(stacked.shape[0] - 1):
                axes[i + 1, j].set_xlabel(class_names[labels[i, j]], fontsize=6, labelpad=1)
    return fig


def plot_visualizations(images: np.ndarray, units: Sequence[int], *, notes: Sequence[str] | None = None,
                        columns: int = 8, title: str = "", fig=None):
    """Feature visualizations: each unit's images, units in rows of ``columns`` panels.

    Args:
      images: uint8 (U, B, H, W, C) from ``jaxviz.visualize``.
      units: the unit numbers (titled "unit N") or strings, one per unit.
      notes: optional text under each unit's first image (its exemplar ratio, the predicted class...).
    """
    u, b = images.shape[:2]
    panels = u * b
    cols = min(columns * b if b > 1 else columns, panels)
    rows = -(-panels // cols)
    check_grid(rows, cols, what_rows="rows of units", what_cols="images per row")
    fig = _figure(fig, (max(1.2 * cols + 0.3, 0.09 * len(title)), 1.35 * rows + 0.6))
    axes = _axes_grid(fig, rows, cols)
    for ax in axes.flat[panels:]:
        ax.set_axis_off()
    for i in range(u):
        for j in range(b):
            ax = axes.flat[i * b + j]
            _show(ax, images[i, j])
            if j == 0:
                ax.set_title(_column_title(units[i]), fontsize=8)
                if notes is not None:
                    ax.set_xlabel(notes[i], fontsize=6, labelpad=1)
    if title:
        fig.suptitle(title)
    return fig


def plot_masked(images: np.ndarray, units: Sequence[int], *, title: str = "", fig=None):
    """The notebook's ``vis_occ`` output: masked images (K, units, H, W, 3), unit numbers as titles."""
    return plot_top_k(images, units, title=title or "Occlusion masks (kept: the parts that drive the unit)",
                      fig=fig)


def plot_heatmaps(images: np.ndarray, heatmaps: np.ndarray, units: Sequence, *, title: str = "", fig=None):
    """Occlusion heatmaps over their images.

    Each column (unit) is scaled by its own largest absolute value, since
    units differ in magnitude; red means hiding the region lowers the unit.

    Args:
      images: uint8 (K, units, H, W, 3).
      heatmaps: float (K, units, H, W): per-pixel occlusion effect
        (activation drop when the region is hidden).
      units: column titles (ints become "unit N").
    """
    k, u = images.shape[:2]
    check_grid(k, u, what_rows="images per unit (k)", what_cols="units")
    # room for the title and the colorbar's label when there are few units or images
    fig = _figure(fig, (max(1.25 * u + 1.0, 6.5), max(1.3 * k + 0.6, 3.6)))
    axes = _axes_grid(fig, k, u)
    scale = np.abs(heatmaps).reshape(k, u, -1).max(axis=(0, 2))
    scale = np.where(scale > 0, scale, 1.0)
    artist = None
    for i in range(k):
        for j in range(u):
            _show(axes[i, j], images[i, j])
            artist = axes[i, j].imshow(heatmaps[i, j] / scale[j], cmap="RdBu_r", alpha=0.55, vmin=-1, vmax=1)
    for j, unit in enumerate(units):
        axes[0, j].set_title(_column_title(unit), fontsize=8)
    fig.colorbar(artist, ax=axes, shrink=0.6).set_label("activation drop when occluded / column maximum", fontsize=8)
    fig.suptitle(title or "Occlusion heatmaps (red: hiding this region lowers the unit)")
    return fig


def plot_attribution_maps(images: np.ndarray, maps: dict, *, titles: Sequence[str] | None = None, title: str = "",
                          fig=None):
    """Attribution maps of several methods side by side: one row per image, one column per method.

    Methods differ in scale and offset (RISE's saliency is an expectation, all
    positive), so each map is shown centred on its median and scaled by its
    largest deviation from it: red supports the output more than the typical
    pixel, blue less.

    Args:
      images: uint8 (N, H, W, C).
      maps: method name -> float (N, H, W).
      titles: optional row labels (e.g. the class explained).
    """
    names = list(maps)
    n = len(images)
    check_grid(n, len(names) + 1, what_rows="images", what_cols="methods")
    fig = _figure(fig, (1.5 * (len(names) + 1) + 0.8, 1.5 * n + 0.6))
    axes = _axes_grid(fig, n, len(names) + 1)
    artist = None
    for i in range(n):
        _show(axes[i, 0], images[i])
        if titles is not None:
            axes[i, 0].set_ylabel(str(titles[i]), fontsize=7)
        for j, name in enumerate(names):
            m = np.asarray(maps[name][i], np.float32)
            m = m - np.median(m)
            scale = np.abs(m).max() or 1.0
            _show(axes[i, j + 1], images[i], alpha=0.35)
            artist = axes[i, j + 1].imshow(m / scale, cmap="RdBu_r", alpha=0.75, vmin=-1, vmax=1)
    axes[0, 0].set_title("image", fontsize=8)
    for j, name in enumerate(names):
        axes[0, j + 1].set_title(name, fontsize=8)
    fig.colorbar(artist, ax=axes, shrink=0.6, label="(attribution - median) / largest deviation")
    fig.suptitle(title or "Which map to trust? Attribution maps by method")
    return fig


def plot_occluded_examples(images: np.ndarray, *, title: str = "", fig=None):
    """A grid of occluded copies (rows, cols, H, W, 3) of one image, as the notebook shows them."""
    rows, cols = images.shape[:2]
    fig = _figure(fig, (0.9 * cols, 0.9 * rows + 0.4))
    axes = _axes_grid(fig, rows, cols)
    for i in range(rows):
        for j in range(cols):
            _show(axes[i, j], images[i, j])
    fig.suptitle(title or "Occluder positions")
    return fig


def plot_tsne(coords: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, title: str = "",
              ax=None):
    """t-SNE scatter coloured by class with a legend of class names."""
    fig, ax = _single(ax, (7.5, 6))
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for c, name in enumerate(class_names):
        sel = labels == c
        if not sel.any():
            continue
        ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color=cmap(c % 10), label=name)
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of layer features, coloured by true class")
    return fig


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], *, normalize: bool = True, title: str = "",
                   ax=None):
    """Confusion matrix (rows: true class, columns: predicted), with counts and a colorbar."""
    fig, ax = _single(ax, (7, 6))
    cm = np.asarray(cm)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    artist = ax.imshow(shown, cmap="Blues", vmin=0)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.5 * shown.max() else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(artist, ax=ax, label="share of the true class" if normalize else "images")
    ax.set_title(title or "Confusion matrix")
    return fig


def plot_selectivity(histogram: np.ndarray, units: Sequence[int], class_names: Sequence[str], *,
                     title: str = "", ax=None):
    """Class histograms of the top-K images of chosen units, as a heatmap.

    Args:
      histogram: int (len(units), classes).
    """
    check_grid(len(units), 1, what_rows="units", what_cols="units")
    fig, ax = _single(ax, (0.6 * len(class_names) + 2, 0.35 * len(units) + 1.5))
    artist = ax.imshow(histogram, cmap="Greens", aspect="auto", vmin=0)
    for i in range(histogram.shape[0]):
        for j in range(histogram.shape[1]):
            if histogram[i, j]:
                ax.text(j, i, str(histogram[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(units)), [f"unit {u}" for u in units], fontsize=8)
    fig.colorbar(artist, ax=ax, label="top-K images of the class")
    ax.set_title(title or "Classes among each unit's top-K images")
    return fig


def plot_training(history: Sequence[dict], *, ax=None):
    """Loss and accuracy per epoch from ``TrainResult.history``."""
    fig, ax = _single(ax, (6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    if all("test_accuracy" in h for h in history):
        ax.plot(epochs, [h["test_accuracy"] for h in history], label="test accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.set_title("Training")
    return fig


def plot_sanity(layers: Sequence[str], means: dict, *, mode: str = "cascading", threshold: float | None = None,
                title: str = "", ax=None):
    """The randomization sanity check: mean Spearman correlation vs randomized layers, one line per method.

    Args:
      layers: the randomized layers, top first (the x axis: cascading, after randomizing down to
        that layer; independent, that layer alone).
      means: method label -> float (len(layers),) mean correlation with the trained model's map (NaN where
        undefined, e.g. constant maps: left out of the line, and the legend says so).
      mode: "cascading" or "independent" (the axis label).
      threshold: draw the pass line at this correlation.
    """
    fig, ax = _single(ax, (6.5, 3.8))
    steps = np.arange(len(layers) + 1)  # step 0: the trained model, its own map (correlation 1)
    ax.axhline(0, color="0.6", lw=0.8)
    if threshold is not None:
        ax.axhline(threshold, color="0.4", lw=0.8, ls="--", label=f"pass below {threshold:g}")
    for name, values in means.items():
        values = np.asarray(values, np.float64)
        undefined = int(np.isnan(values).sum())  # constant maps: no correlation, a gap in the line
        label = name if not undefined else f"{name} (undefined: all)" if undefined == len(values) else \
            f"{name} (undefined at {undefined} of {len(values)})"
        ax.plot(steps, np.concatenate([[1.0], values]), marker="o", ms=3, label=label)
    ax.set_xticks(steps, ["trained", *(("→ " if mode == "cascading" else "") + n for n in layers)], rotation=45,
                  ha="right", fontsize=7)
    ax.set_xlabel("randomized down to layer (cascading)" if mode == "cascading" else "randomized layer (alone)")
    ax.set_ylabel("Spearman ρ with trained map")
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    ax.legend(fontsize=7)
    ax.set_title(title or "Sanity check: do the maps change when the model is randomized?")
    return fig


def plot_cka(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], *, title: str = "", ax=None):
    """Linear CKA (L, L') as a heatmap in [0, 1] with the values written in; NaN cells left blank."""
    fig, ax = _single(ax, (1.6 + 0.55 * len(columns), 1.2 + 0.5 * len(rows)))
    matrix = np.asarray(matrix, np.float64)
    artist = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if matrix[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(artist, ax=ax, label="linear CKA")
    ax.set_title(title or "CKA between layers")
    return fig


def plot_tcav(result, *, title: str = "", fig=None):
    """A ``TCAV`` result: per layer a grid of concepts (rows) by classes (columns), each cell the mean TCAV score
    where the test is significant, grey and marked n.s. (no score) where it is not."""
    from matplotlib import colormaps

    layers, concepts, targets = result.layers, result.concepts, result.targets
    fig = _figure(fig, (0.45 * len(targets) * len(layers) + 1.6 * len(layers) + 1.2, 0.4 * len(concepts) + 1.8))
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for k, ax in enumerate(axes):
        shown = np.where(result.significant[:, :, k], result.scores[:, :, k], np.nan)
        artist = ax.imshow(np.ma.masked_invalid(shown), cmap=colormaps["RdBu_r"].with_extremes(bad="0.9"), vmin=0,
                           vmax=1)
        for i in range(len(concepts)):
            for j in range(len(targets)):
                ax.text(j, i, f"{shown[i, j]:.2f}" if np.isfinite(shown[i, j]) else "n.s.", ha="center",
                        va="center", fontsize=6, color="0.35" if not np.isfinite(shown[i, j]) else "black")
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(concepts)), concepts if k == 0 else [""] * len(concepts), fontsize=7)
        ax.set_title(layers[k], fontsize=9)
    fig.colorbar(artist, ax=list(axes), label="TCAV score", shrink=0.8)
    fig.suptitle(title or f"TCAV, {result.runs} runs (n.s.: not significant, p >= {result.alpha:g} / "
                          f"{result.p_values.size})", fontsize=9)
    return fig
