"""PNG figures of a trained run used as a tokenizer (matplotlib, Agg backend): images above
their reconstructions (``vqbench reconstruct``) and the sorted code-usage histogram
(``vqbench usage``). Imported on its own, as :mod:`.plots` is."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from ..rundir import write_atomic  # noqa: E402


def _save(fig, path: Path) -> Path:
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100), "wb")
    plt.close(fig)
    return path


def reconstruction_png(path: Path, grid: Tensor, title: str, scale: int = 4) -> Path:
    """The comparison grid (3, H, W) in [0, 1], each pixel ``scale`` × ``scale``, under ``title``."""
    pixels = grid.permute(1, 2, 0).clamp(0, 1).numpy()
    h, w = pixels.shape[:2]
    lines = title.count("\n") + 1
    fig = plt.figure(figsize=(max(w * scale / 100, 6.0), h * scale / 100 + 0.22 * lines + 0.2))
    ax = fig.add_axes((0, 0, 1, h * scale / 100 / fig.get_figheight()))
    ax.imshow(pixels, interpolation="nearest", aspect="equal")
    ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_figheight(), va="top")
    return _save(fig, path)


def usage_png(path: Path, counts: Tensor, stats: dict[str, Any], title: str) -> Path:
    """Codes sorted by how often they are used (bars), the dead ones at the right, with ``stats``."""
    ordered = np.sort(counts.cpu().numpy())[::-1]
    share = ordered / max(ordered.sum(), 1) * 100
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(np.arange(len(share)), share, width=1.0, color="tab:blue", linewidth=0)
    if stats["dead_codes"]:
        ax.axvspan(stats["codes_used"] - 0.5, len(share) - 0.5, color="tab:red", alpha=0.12,
                   label=f"{stats['dead_codes']} dead codes")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.5, len(share) - 0.5)
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("share of positions (%)")
    ax.set_title(f"{title}\n{stats['codes_used']}/{stats['num_codes']} codes used ({stats['usage']:.1%}), "
                 f"{stats['dead_codes']} dead, code perplexity {stats['code_perplexity']:.1f} "
                 f"({stats['positions']:,} positions)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
