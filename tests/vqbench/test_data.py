"""vqbench/data.py on real images: the tiny CIFAR-10 set, .npz shards and the CelebA folder
from ../shared/data, and a missing download said with its fix."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import shared_data_or_skip
from vqbench import UserError, resolve_config
from vqbench.data import load_dataset


def test_tiny_cifar10_is_real_balanced_uint8():
    data = load_dataset(resolve_config("vqvae", "cifar10-tiny").data)
    assert data.train.shape == (320, 3, 32, 32) and data.test.shape == (160, 3, 32, 32)
    assert data.train.dtype == torch.uint8 and data.train.float().std() > 40


def test_npz_shards_from_shared_data():
    path = shared_data_or_skip("cifar10", "test.npz")
    cfg = resolve_config("vqvae", "npz", None, [f"data.train={path}", f"data.test={path}", "data.limit=100"])
    data = load_dataset(cfg.data)
    assert data.train.shape == (100, 3, 32, 32) and data.test.shape == (10000, 3, 32, 32)


def test_celeba_folder_center_crops_to_128():
    folder = shared_data_or_skip("celeba", "img_align_celeba_half")
    cfg = resolve_config("vqvae", "celeba", None, [f"data.root={folder}", "data.limit=4", "data.test_limit=2"])
    data = load_dataset(cfg.data)
    assert data.train.shape == (4, 3, 128, 128) and data.test.shape == (2, 3, 128, 128)


def test_cifar10_without_download_says_how_to_fix(tmp_path):
    cfg = resolve_config("vqvae", "cifar10", None, [f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(UserError, match="data.download=true"):
        load_dataset(cfg.data)
