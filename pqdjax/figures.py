"""The report's figures, as PNG files written atomically.

    accuracy_vs_ipc     student test accuracy against IPC, one line per method, a panel per student architecture,
                        error bars of one standard deviation over seeds, the
                        teacher ("full data") as a dashed line
    weight_histograms   per class, the histogram of the quantizer's Voronoi
                        weights times K (1 is the uniform weight of D4M)
    sweep_curves        teacher agreement, cell consistency and student validation
                        accuracy against strength, a line per guidance (pqdjax.sweep)
    image_grid          images in rows per class (distilled_grid: a synthetic set
                        with its weights; the shipped denoiser's samples)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from pqdjax import artifacts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> None:
    """Renders `fig` to PNG in memory, then writes it atomically (no half-written PNG), and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    artifacts.write_bytes(path, buffer.getvalue())


def accuracy_vs_ipc(
    path: str,
    panels: Mapping[str, Mapping[str, Mapping[int, Mapping[str, float]]]],
    methods: Sequence[str],
    teacher_accuracy: float | None = None,
) -> None:
    """One panel per student architecture, side by side on one accuracy axis.

    panels: {title: {method: {ipc: {'mean', 'std', ...}}}} of accuracies in [0, 1] (stages.report.summarize),
    the first the main student's, then one per config.evaluate.cross_architectures entry.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (title, summary) in zip(axes[0], panels.items()):
        ipcs_seen: set[int] = set()
        for method in methods:
            cells = summary.get(method, {})
            ipcs = sorted(cells)
            ipcs_seen.update(ipcs)
            means = [100 * cells[k]["mean"] for k in ipcs]
            stds = [100 * cells[k]["std"] for k in ipcs]
            ax.errorbar(ipcs, means, yerr=stds, marker="o", capsize=4, label=method)
        if teacher_accuracy is not None:
            ax.axhline(100 * teacher_accuracy, color="gray", linestyle="--", label="full data (teacher)")
        if len(ipcs_seen) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sorted(ipcs_seen), [str(k) for k in sorted(ipcs_seen)])
        ax.minorticks_off()
        ax.set_xlabel("images per class (IPC)")
        ax.set_title(title, fontsize=10)
    axes[0, 0].set_ylabel("student test accuracy (%)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Accuracy against IPC (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def weight_histograms(path: str, weights: np.ndarray, class_names: Sequence[str], title: str = "") -> None:
    """weights: [C, K], each row a class's point weights summing to 1; one histogram of K * w per class."""
    plt = _pyplot()
    weights = np.asarray(weights, np.float64)
    num_classes, k = weights.shape
    scaled = weights * k  # 1 = uniform
    edges = np.histogram_bin_edges(scaled, bins=min(20, max(5, k)))
    columns = min(5, num_classes)
    rows = -(-num_classes // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 1.9 * rows), sharex=True, squeeze=False)
    for c in range(rows * columns):
        ax = axes.flat[c]
        if c >= num_classes:
            ax.axis("off")
            continue
        ax.hist(scaled[c], bins=edges, color="tab:blue")
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_title(str(class_names[c]), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("K × weight", fontsize=8)
    fig.suptitle(title or f"Voronoi weights per class (K = {k}; dashed: uniform)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def image_grid(path: str, images: np.ndarray, class_names: Sequence[str], title: str, captions: np.ndarray | None = None) -> None:
    """uint8 images [C, n, H, W, ch] as a grid, one row per class named on the left; captions [C, n] of str above each."""
    plt = _pyplot()
    num_classes, n = images.shape[:2]
    fig, axes = plt.subplots(num_classes, n, figsize=(1.1 * n + 1.2, 1.25 * num_classes), squeeze=False)
    for c in range(num_classes):
        for k in range(n):
            ax = axes[c, k]
            image = images[c, k]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
            if captions is not None:
                ax.set_title(captions[c, k], fontsize=7, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(class_names[c], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def distilled_grid(path: str, synthetic_set, class_names: Sequence[str]) -> None:
    """A grid of the set's images, one row per class, each titled with its weight."""
    weights = synthetic_set.weights
    captions = np.vectorize(lambda w: f"w={w:.3f}")(weights)
    title = f"{synthetic_set.method} images, IPC {weights.shape[1]}, with their weights"
    image_grid(path, synthetic_set.images, class_names, title, captions)


def pushforward_strips(path: str, strips: dict, class_names: Sequence[str]) -> None:
    """One row per point: the VAE decoding of the latent point, then img2img at each strength."""
    plt = _pyplot()
    images = strips["images"]  # [classes, points, 1 + strengths, H, W, ch]
    num_classes, per_class, columns = images.shape[:3]
    titles = ["VAE"] + [f"s={s:g}" for s in strips["strengths"]]
    fig, axes = plt.subplots(num_classes * per_class, columns, figsize=(1.1 * columns + 1.2, 1.15 * num_classes * per_class), squeeze=False)
    for c in range(num_classes):
        for k in range(per_class):
            row = c * per_class + k
            for j in range(columns):
                ax = axes[row, j]
                image = images[c, k, j]
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(titles[j], fontsize=7, pad=2)
            axes[row, 0].set_ylabel(f"{class_names[int(strips['classes'][c])]} {k}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"quantization points (IPC {int(strips['ipc'])}): VAE decoding, then img2img at strength s", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def sweep_curves(path: str, records: Sequence[Mapping]) -> None:
    """records: pqdjax.sweep's, one per (guidance, strength, method); values averaged over methods per setting."""
    plt = _pyplot()
    panels = (("teacher_agreement", "teacher agreement (%)"), ("cell_consistency", "cell consistency (%)"),
              ("validation_accuracy", "student validation accuracy (%)"))
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.3))
    for guidance in sorted({r["guidance"] for r in records}):
        strengths = sorted({r["strength"] for r in records if r["guidance"] == guidance})
        for ax, (key, label) in zip(axes, panels):
            values = []
            for s in strengths:
                cell = [r[key] for r in records if r["guidance"] == guidance and r["strength"] == s and r[key] is not None]
                values.append(100 * float(np.mean(cell)) if cell else np.nan)
            ax.plot(strengths, values, marker="o", label=f"guidance {guidance:g}")
            ax.set_xlabel("strength")
            ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("img2img strength and guidance on the validation split (mean over methods)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
