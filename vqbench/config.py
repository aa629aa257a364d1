"""Typed run configuration: defaults ← registry entry ← user YAML ← ``key=value`` overrides.

Everything is checked before anything runs: unknown keys, wrong types and out-of-range
values are a :class:`~vqbench.errors.UserError` (one line, exit 2).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_checks import check_ranges
from .config_values import resolved as _resolved
from .errors import UserError, first_line, suggest
from .registry import registry_document, resolve_quantizer_kwargs


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: str = "data"  # where torchvision datasets live (and download to)
    download: bool = True
    train: Optional[str] = None  # npz: a path or glob of shards
    test: Optional[str] = None
    limit: Optional[int] = None  # use only the first N training images
    test_limit: Optional[int] = None
    validation: Optional[float] = None  # evaluate on the last N (or fraction) of the train images, not test
    image_size: Optional[int] = None  # None: the dataset's own (registry.yaml)
    test_fraction: float = 0.1  # image folders without a partition file


@dataclass
class ModelConfig:
    name: Optional[str] = None  # None: the dataset's default model
    latent_dim: int = 64  # paper §5.1
    channels: int = 64
    res_blocks: int = 2


@dataclass
class TrainConfig:
    epochs: int = 100  # paper §5.1
    max_steps: Optional[int] = None  # stop after this many optimiser steps
    batch_size: int = 256
    lr: Optional[float] = None  # None: the dataset's maximum lr (1e-2 CIFAR-10, 1e-4 CelebA)
    weight_decay: float = 1e-4  # applied to the codebook too
    warmup_fraction: float = 0.1  # 10 of 100 epochs
    warmup_start_factor: float = 0.2
    kmeans_init: bool = True
    kmeans_samples: int = 16384
    kmeans_iters: int = 20
    eval_batch_size: int = 256  # perplexity is per batch of this size, averaged
    grad_clip: Optional[float] = None
    amp: str = "auto"  # auto: bf16 autocast on CUDA, none on CPU; or bf16 / none
    channels_last: bool = True  # on CUDA only
    # torch.compile mode for the autoencoder (forward and backward): none (default; on CPU
    # compiling costs minutes), default, reduce-overhead (CUDA graphs), max-autotune,
    # max-autotune-no-cudagraphs. See docs/performance.md.
    compile: str = "none"
    # The whole step (gather, forward, backward, AdamW) replayed as one CUDA graph; CUDA
    # only, with compile none/default/max-autotune-no-cudagraphs. vqbench/training/graph.py.
    cuda_graph: bool = False
    # torch.set_float32_matmul_precision: highest (exact fp32), high (TF32 on tensor cores:
    # the quantizer's fp32 distance matmuls get ≈ 7× faster on an H100, 10-bit mantissa).
    matmul_precision: str = "highest"
    checkpoint_every: Optional[int] = None  # also every K steps (epoch ends always)
    # none, or tensorboard: scalars per epoch and a reconstruction grid every log_images_every
    # epochs (and the last) in RUN/tb/ (pip install 'vqbench[tensorboard]'); metrics.jsonl either way.
    log: str = "none"
    log_images_every: int = 10


@dataclass
class RunConfig:
    quantizer: Dict[str, Any] = field(default_factory=lambda: {"name": "gmvq"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: Optional[str] = None  # run folder name; default <quantizer>-<dataset>-<config hash>
    results: Optional[str] = "results"  # folder of tidy result rows (vqbench.rows); null: none


# Keys that say where and how a run is stored, not what it computes: left out of the hash
# (so a resumed run may change them and still find its run folder).
_NOT_HASHED = ("out", "name", "device", "results")
_NOT_HASHED_TRAIN = ("checkpoint_every", "cuda_graph", "log", "log_images_every")  # cuda_graph: the same step, replayed
_HASHED_IF_NOT = {("train", "matmul_precision"): "highest", ("data", "validation"): None}


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``key=value`` strings to a DictConfig; values are parsed as YAML (1e-3, true, null)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=3)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:  # YAML: `x=[`, a control character
        raise UserError(f"cannot parse overrides: {first_line(exc)}") from exc


def _merge(base: DictConfig, update: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        if exc.__class__.__name__ == "ConfigKeyError" and key:
            parent, _, leaf = str(key).rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            choices = list(node.keys()) if isinstance(node, DictConfig) else []
            raise UserError(f"unknown config key {key!r} in {where}{suggest(leaf, choices)}") from exc
        if exc.__class__.__name__ == "ValidationError" and key:
            expected = _EXPECTED.get(_node_kind(base, str(key)), "another type")
            raise UserError(f"{key} must be {expected}, got {getattr(exc, 'value', None)!r} (in {where})") from exc
        raise UserError(f"bad value in {where}: {first_line(exc)}") from exc
    except (TypeError, ValueError) as exc:  # e.g. a list where a mapping of keys belongs
        raise UserError(f"bad value in {where}: {first_line(exc)}") from exc


_EXPECTED = {"IntegerNode": "a whole number", "FloatNode": "a number", "BooleanNode": "true or false",
             "StringNode": "a string"}


def _node_kind(cfg: DictConfig, key: str) -> str:
    """The typed node class OmegaConf keeps for ``key`` (IntegerNode, ...), or ''."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    child = node._get_node(leaf) if isinstance(node, DictConfig) else None
    return type(child).__name__ if child is not None else ""


def resolve_config(
    quantizer: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | DictConfig | None = None,
) -> DictConfig:
    """The fully resolved, validated run configuration."""
    cfg = OmegaConf.structured(RunConfig)
    if base is not None:
        cfg = _merge(cfg, base, "the base configuration")
    named = {}
    if quantizer is not None:
        named["quantizer"] = {"name": quantizer}
    if dataset is not None:
        named["data"] = {"name": dataset}
    if model is not None:
        named["model"] = {"name": model}
    cfg = _merge(cfg, named, "the command line")
    dotlist = parse_overrides(overrides or [])
    cfg = _resolved(_merge(cfg, dotlist, "the overrides"))

    doc = registry_document()
    datasets, models = doc.get("datasets", {}), doc.get("models", {})
    if cfg.data.name not in datasets:
        raise UserError(f"unknown dataset {cfg.data.name!r}{suggest(cfg.data.name, datasets)}")
    dataset_spec = datasets[cfg.data.name]
    if dataset_spec.get("defaults"):
        # The dataset's recipe sits under everything the user said (base, flags, overrides).
        user = _merge(_merge(OmegaConf.create(base or {}), named, "the command line"), dotlist, "the overrides")
        cfg = _resolved(_merge(_merge(OmegaConf.structured(RunConfig), dataset_spec["defaults"], "registry.yaml"),
                               user, "the configuration"))
    if cfg.model.name is None:
        cfg.model.name = dataset_spec["model"]
    if cfg.model.name not in models:
        raise UserError(f"unknown model {cfg.model.name!r}{suggest(cfg.model.name, models)}")
    for key, least in models[cfg.model.name].get("minimum", {}).items():  # e.g. conv32-ref's widths
        if cfg.model[key] < least:
            raise UserError(f"model {cfg.model.name} needs model.{key} ≥ {least}, got {cfg.model[key]}")
    if cfg.train.lr is None:
        cfg.train.lr = float(dataset_spec["lr"])
    if cfg.data.image_size is None:
        cfg.data.image_size = int(dataset_spec["image_size"])
    check_ranges(cfg)

    qsection = OmegaConf.to_container(cfg.quantizer, resolve=True)
    qname = qsection.pop("name", None)
    if not qname:
        raise UserError("no quantizer given: pass --quantizer NAME (see `vqbench list`)")
    if "dim" in qsection and qsection["dim"] != cfg.model.latent_dim:
        raise UserError("quantizer.dim follows the model: set model.latent_dim instead")
    qsection["dim"] = cfg.model.latent_dim
    resolved = resolve_quantizer_kwargs(str(qname), qsection)
    cfg.quantizer = {"name": str(qname), **resolved}
    return cfg


def load_config_file(path: str | Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError as exc:
        raise UserError(f"config file {path} does not exist") from exc
    except Exception as exc:
        raise UserError(f"config file {path} cannot be read: {first_line(exc)}") from exc
    if not isinstance(cfg, DictConfig):
        raise UserError(f"config file {path} must map config keys to values (e.g. train: {{epochs: 3}}), "
                        f"not hold a {type(cfg).__name__}")
    return cfg


def config_hash(cfg: DictConfig) -> str:
    """A stable id of what a run computes (where it is stored does not count)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_HASHED:
        data.pop(key, None)
    for key in _NOT_HASHED_TRAIN:
        data.get("train", {}).pop(key, None)
    for (section, key), default in _HASHED_IF_NOT.items():  # hashes from before these options stay
        if data.get(section, {}).get(key, default) == default:
            data.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
