"""Datasets as uint8 image tensors (N, 3, H, W); pixels become [0, 1] floats per batch.

Holding whole splits as uint8 lets the trainer keep CIFAR-10 on the GPU (150 MB) and batch
by indexing, with no DataLoader. MSE is always reported on the [0, 1] scale.
"""
from __future__ import annotations

import glob
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .registry import registry_document

TINY_CIFAR10 = Path(__file__).resolve().parent / "assets" / "cifar10-tiny.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageData:
    train: Tensor  # uint8 (N, 3, H, W)
    test: Tensor  # what the run is evaluated on: the test split, or the validation images
    eval_split: str = "test"  # or "validation": the last images of the train split (data.validation)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def to_float_images(batch_u8: Tensor, channels_last: bool) -> Tensor:
    """A uint8 batch as [0, 1] floats, channels_last in memory where asked."""
    x = batch_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _to_nchw(array: np.ndarray, where: str) -> Tensor:
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise UserError(f"{where}: expected uint8 images shaped (N, H, W, 3), got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _read_npz(path: Path, keys: tuple[str, ...]) -> np.ndarray:
    if path.is_file() and not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and advise allow_pickle; it is just not an .npz.
        raise UserError(f"{path} is not a readable .npz file (truncated, or not a zip archive); expected np.savez output "
                        f"with an array named {' or '.join(keys)}")
    try:
        with np.load(path) as archive:
            for key in keys:
                if key in archive:
                    return archive[key]
            raise UserError(f"{path} has no array named {' or '.join(keys)} (it has {', '.join(archive.files)})")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def read_npz_images(path: Path, keys: tuple[str, ...]) -> Tensor:
    """uint8 images (N, 3, H, W) from the first of ``keys`` in an .npz file (one line if not)."""
    return _to_nchw(_read_npz(path, keys), str(path))


def _npz_split(pattern: str | None, keys: tuple[str, ...], which: str) -> Tensor:
    if not pattern:
        raise UserError(f"dataset npz needs data.{which}=PATH (a .npz file or a glob of shards)")
    paths = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())))
    if not paths:
        raise UserError(f"data.{which}={pattern} matches no file")
    parts = [read_npz_images(p, keys) for p in paths]
    if len({p.shape[1:] for p in parts}) > 1:
        raise UserError(f"data.{which}: shards have different image shapes")
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# Each loader reads the train split and, where with_test, the test split (else test is empty).
def load_npz(cfg, with_test: bool = True) -> ImageData:
    return ImageData(_npz_split(cfg.train, ("x", "x_train"), "train"),
                     _npz_split(cfg.test, ("x", "x_test"), "test") if with_test else _NO_IMAGES)


def load_cifar10_tiny(cfg, with_test: bool = True) -> ImageData:
    return ImageData(read_npz_images(TINY_CIFAR10, ("x_train",)),
                     read_npz_images(TINY_CIFAR10, ("x_test",)) if with_test else _NO_IMAGES)


def load_cifar10(cfg, with_test: bool = True) -> ImageData:
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False)[: 2 if with_test else 1]:
        try:
            dataset = CIFAR10(root=cfg.root, train=train, download=bool(cfg.download))
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise UserError(
                f"CIFAR-10 is not under data.root={cfg.root}: pass data.download=true (needs internet), "
                "point data.root at the folder holding cifar-10-batches-py, or use --dataset npz / cifar10-tiny"
            ) from exc
        except OSError as exc:  # no network: URLError and friends
            raise UserError(
                f"CIFAR-10 download into {cfg.root} failed ({exc}); without internet use "
                "--dataset npz data.train=... data.test=... or --dataset cifar10-tiny"
            ) from exc
        splits.append(_to_nchw(dataset.data, "CIFAR-10"))
    return ImageData(splits[0], splits[1] if with_test else _NO_IMAGES)


def _center_crop_resize(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
            return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path} is not a readable image ({exc})") from exc


def _celeba_files(root: Path) -> tuple[list[Path], list[Path]]:
    """torchvision's layout (celeba/img_align_celeba + list_eval_partition.txt) or any image folder."""
    for base in (root / "celeba", root):
        folder, partition = base / "img_align_celeba", base / "list_eval_partition.txt"
        if folder.is_dir() and partition.is_file():
            train, test = [], []
            for line in partition.read_text().split("\n"):
                if line.strip():
                    name, split = line.split()
                    if (folder / name).is_file():
                        (test if split == "2" else train if split == "0" else []).append(folder / name)
            return train, test
    if not root.is_dir():
        raise UserError(f"data.root={root} is not a folder; point it at CelebA's img_align_celeba or any face images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files, []


def load_celeba(cfg, with_test: bool = True) -> ImageData:
    root = Path(cfg.root).expanduser()
    train_files, test_files = _celeba_files(root)
    if not train_files:
        raise UserError(f"no images (.jpg/.png) under data.root={root}")
    if not test_files:  # a plain folder: the last test_fraction of the sorted files
        cut = max(1, int(round(len(train_files) * (1 - cfg.test_fraction))))
        train_files, test_files = train_files[:cut], train_files[cut:] or train_files[-1:]
    if cfg.limit:
        train_files = train_files[: cfg.limit]
    if cfg.test_limit:
        test_files = test_files[: cfg.test_limit]
    size = int(cfg.image_size)

    def stack(files: list[Path]) -> Tensor:
        return _to_nchw(np.stack([_center_crop_resize(p, size) for p in files]), str(root))

    return ImageData(stack(train_files), stack(test_files) if with_test else _NO_IMAGES)


_NO_IMAGES = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
LOADERS = {"cifar10": load_cifar10, "cifar10_tiny": load_cifar10_tiny, "npz": load_npz, "celeba": load_celeba}


def load_dataset(cfg) -> ImageData:
    """Load ``cfg`` (the ``data`` section); limits apply after loading.

    With ``data.validation`` (a fraction, or a number of images) the last training images
    (of the first ``data.limit``) are held out and the run is evaluated on them; the test split is then never read, so
    tuning on it cannot happen by accident (sweeps always set it).
    """
    spec = registry_document()["datasets"][cfg.name]
    validation = cfg.get("validation")
    data = LOADERS[spec["loader"]](cfg, with_test=validation is None)
    if cfg.limit:  # first: the validation images are the last of the images a run may use
        data.train = data.train[: cfg.limit]
    if validation is not None:
        n = int(validation) if validation >= 1 else int(round(len(data.train) * validation))
        if not 1 <= n < len(data.train):
            raise UserError(f"data.validation={validation:g} holds out {n} of the {len(data.train)} training "
                            "images; hold out at least 1 and leave some to train on")
        data = ImageData(data.train[:-n], data.train[-n:], eval_split="validation")
    if cfg.test_limit and validation is None:
        data.test = data.test[: cfg.test_limit]
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"dataset {cfg.name}: the train and test splits must both hold images")
    if data.train.shape[1:] != data.test.shape[1:]:
        raise UserError(f"dataset {cfg.name}: train images {tuple(data.train.shape[1:])} and test images "
                        f"{tuple(data.test.shape[1:])} differ in shape")
    return data
