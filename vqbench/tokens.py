"""What is made with a :class:`~vqbench.tokenizer.Tokenizer`: the data it reads (the run's own
or another dataset, ``data.*`` overrides), token files (``vqbench encode``), code-usage
statistics (``vqbench usage``), and the output-file checks made before any of it is computed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

import quantizers.functional as Fq

from .config import DataConfig, parse_overrides
from .data import ImageData, load_dataset
from .errors import UserError, first_line, suggest
from .registry import registry_document
from .rundir import writable_dir, write_atomic
from .tokenizer import Tokenizer


def output_file(path: str | os.PathLike, suffix: str, what: str) -> Path:
    """``path`` checked before any work: ends in ``suffix``, is not a folder (nothing is created)."""
    out = Path(path).expanduser()
    if out.suffix.lower() != suffix:
        raise UserError(f"the {what} {out} must end in {suffix}")
    if out.is_dir():
        raise UserError(f"the {what} {out} is a folder; pass a file name ending in {suffix}")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"the {what} {out}: {out.parent} is a file, not a folder")
    return out


def prepare_output(path: Path, what: str) -> Path:
    """The output's folder created and probed with a write, once the work is done."""
    writable_dir(path.parent, f"folder for the {what}", "pass --out in a writable folder")
    return path


def run_data(tok: Tokenizer, dataset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The ``data`` section to read: the run's own (``dataset`` None or the run's), else
    ``dataset``'s registry defaults; then ``data.KEY=VALUE`` ``overrides`` (other keys refused)."""
    datasets = registry_document().get("datasets", {})
    if dataset is not None and dataset not in datasets:
        raise UserError(f"unknown dataset {dataset!r}{suggest(dataset, datasets)}")
    if dataset is None or dataset == tok.config.data.name:
        base = tok.config.data
    else:
        spec = datasets[dataset]
        defaults = (spec.get("defaults") or {}).get("data", {})
        base = OmegaConf.merge(OmegaConf.structured(DataConfig), defaults,
                               {"name": dataset, "image_size": int(spec["image_size"])})
    for item in overrides:
        if not item.startswith("data."):
            raise UserError(f"only data.KEY=VALUE overrides apply here (where the images are), got {item!r}")
    try:
        return OmegaConf.merge(base, parse_overrides(list(overrides)).get("data", {}))
    except OmegaConfBaseException as exc:
        raise UserError(f"bad data override: {first_line(exc)}") from exc


def read_split(tok: Tokenizer, data_cfg: DictConfig, split: str) -> Tensor:
    """One split (``train`` or ``test``) of ``data_cfg`` as uint8 (N, 3, H, W)."""
    data: ImageData = load_dataset(data_cfg)
    return {"train": data.train, "test": data.test}[split]


def token_dtype(num_codes: int) -> np.dtype:
    """uint16 where every code fits (C ≤ 65,536), else int32."""
    return np.dtype(np.uint16) if num_codes <= 2**16 else np.dtype(np.int32)


def save_tokens(path: Path, tokens: dict[str, Tensor], tok: Tokenizer, dataset: str) -> dict[str, np.ndarray]:
    """An .npz of code grids (one (N, h, w) array per split, :func:`token_dtype`) and what they
    are codes of: ``num_codes``, ``run``, ``quantizer``, ``dataset``, ``config_hash`` (plain
    arrays: ``np.load`` needs no pickle). Written atomically; returns the arrays."""
    dtype = token_dtype(tok.num_codes)
    arrays: dict[str, Any] = {split: codes.cpu().numpy().astype(dtype) for split, codes in tokens.items()}
    arrays.update(num_codes=np.int64(tok.num_codes), run=np.str_(tok.name), quantizer=np.str_(tok.config.quantizer.name),
                  dataset=np.str_(dataset), config_hash=np.str_(tok.config_hash))
    write_atomic(Path(path), lambda fh: np.savez(fh, **arrays), "wb")
    return arrays


def usage_stats(counts: Tensor) -> dict[str, Any]:
    """Codes used and dead, usage (used / C), the histogram's perplexity, positions counted."""
    used = int((counts > 0).sum())
    return {"num_codes": len(counts), "codes_used": used, "dead_codes": len(counts) - used,
            "usage": used / len(counts), "code_perplexity": float(Fq.histogram_perplexity(counts)),
            "positions": int(counts.sum())}
