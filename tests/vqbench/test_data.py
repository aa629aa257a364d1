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


def _cifar10_folder(root, train, test):
    """torchvision's cifar-10-batches-py layout (pickled dicts, rows of 3072 bytes in CHW order)
    holding the given (N, 32, 32, 3) uint8 arrays: the training images over the five batches."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir()

    def dump(name, images):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR's own file layout
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rows, "labels": [0] * len(images)}, fh)

    for i, part in enumerate(np.array_split(train, 5), start=1):
        dump(f"data_batch_{i}", part)
    dump("test_batch", test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class {k}" for k in range(10)]}, fh)


def test_cifar10_folder_reads_pixel_exact_through_torchvision(tmp_path, monkeypatch):
    """The torchvision CIFAR-10 folder a user downloaded, read into (N, 3, 32, 32) uint8 pixel
    for pixel (the md5 check of the real files is torchvision's; it is bypassed for these)."""
    import numpy as np
    import torchvision.datasets.cifar

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _cifar10_folder(tmp_path, train, test)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    cfg = resolve_config("vqvae", "cifar10", None, [f"data.root={tmp_path}", "data.download=false"])
    data = load_dataset(cfg.data)
    assert data.train.dtype == torch.uint8 and data.image_shape == (3, 32, 32)
    assert torch.equal(data.train, torch.from_numpy(train).permute(0, 3, 1, 2))
    assert torch.equal(data.test, torch.from_numpy(test).permute(0, 3, 1, 2))
    from vqbench.data import load_cifar10

    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()  # a validation run never reads the test split
    train_only = load_cifar10(cfg.data, with_test=False)
    assert torch.equal(train_only.train, data.train) and len(train_only.test) == 0


def test_cifar10_errors_name_the_folder_and_the_fix(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    cfg = resolve_config("vqvae", "cifar10", None, [f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(UserError) as missing:
        load_dataset(cfg.data)
    assert str(missing.value) == (f"CIFAR-10 is not under data.root={tmp_path}: pass data.download=true (needs "
                                  "internet), point data.root at the folder holding cifar-10-batches-py, or use "
                                  "--dataset npz / cifar10-tiny")

    def offline(self, *args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(CIFAR10, "download", offline)
    cfg = resolve_config("vqvae", "cifar10", None, [f"data.root={tmp_path}", "data.download=true"])
    with pytest.raises(UserError) as failed:
        load_dataset(cfg.data)
    assert str(failed.value) == (f"CIFAR-10 download into {tmp_path} failed (no route to host); without internet "
                                 "use --dataset npz data.train=... data.test=... or --dataset cifar10-tiny")


def test_npz_layout_round_trips_pixel_exact(tmp_path):
    """(N, H, W, 3) arrays become (N, 3, H, W) by a transpose, pixel for pixel; non-square
    images and two shards (concatenated in sorted order) make a reshape show."""
    import numpy as np

    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 256, (n, 6, 10, 3), dtype=np.uint8) for n in (3, 2)]
    for i, arr in enumerate(shards):
        np.savez(tmp_path / f"train-{i}.npz", x=arr)
    test = rng.integers(0, 256, (4, 6, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "test.npz", x_test=test)
    cfg = resolve_config("vqvae", "npz", None, [f"data.train={tmp_path}/train-*.npz", f"data.test={tmp_path}/test.npz",
                                                  "data.test_limit=3"])
    data = load_dataset(cfg.data)
    expected = np.concatenate(shards)
    assert data.train.shape == (5, 3, 6, 10) and data.train.dtype == torch.uint8
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 5, 9), (4, 1, 3, 7), (2, 0, 5, 0)]:
        assert int(data.train[n, c, h, w]) == int(expected[n, h, w, c])
    assert torch.equal(data.train, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert torch.equal(data.test, torch.from_numpy(test[:3]).permute(0, 3, 1, 2))
    assert data.image_shape == (3, 6, 10)


def _banded(path, w, h, centre=(0, 200, 0)):
    """A w×h image: the centred min(w, h) square in ``centre``, red on the left, blue on the right."""
    from PIL import Image

    image = Image.new("RGB", (w, h), centre)
    side = min(w, h)
    left = (w - side) // 2
    image.paste((255, 0, 0), (0, 0, left, h))
    image.paste((0, 0, 255), (left + side, 0, w, h))
    image.save(path)


def test_celeba_center_crop_of_a_non_square_image(tmp_path):
    """A 60×40 image: the centre 40×40 (uniform green) resized to image_size, no side bands."""
    for i in range(4):
        _banded(tmp_path / f"{i:03d}.png", 60, 40)
    cfg = resolve_config("vqvae", "celeba", None, [f"data.root={tmp_path}", "data.image_size=16", "data.test_fraction=0.25"])
    data = load_dataset(cfg.data)
    assert data.train.shape == (3, 3, 16, 16) and data.test.shape == (1, 3, 16, 16)
    green = torch.tensor([0, 200, 0], dtype=torch.uint8)[None, :, None, None]
    assert (data.train.int() - green.int()).abs().max() <= 1


def test_celeba_partition_file_splits_train_and_test(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    colours = {"a.png": (10, 0, 0), "b.png": (20, 0, 0), "c.png": (30, 0, 0), "d.png": (40, 0, 0)}
    for name, colour in colours.items():
        _banded(folder / name, 20, 20, colour)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("a.png 0\nb.png 1\nc.png 2\nd.png 0\nmissing.png 0\n")
    cfg = resolve_config("vqvae", "celeba", None, [f"data.root={tmp_path}", "data.image_size=8"])
    data = load_dataset(cfg.data)
    assert data.train[:, 0, 0, 0].tolist() == [10, 40] and data.test[:, 0, 0, 0].tolist() == [30]


def _npz_cfg(train, test, *extra):
    return resolve_config("vqvae", "npz", None, [f"data.train={train}", f"data.test={test}", *extra]).data


def test_npz_mistakes_are_one_line_each(tmp_path):
    import numpy as np

    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((2, 4, 4, 3), np.uint8))
    cases = {
        "notzip.npz": (b"plain text", r"notzip.npz is not a readable .npz file \(truncated, or not a zip archive\); "
                                      r"expected np.savez output with an array named x or x_train$"),
        "nokey.npz": ({"y": np.zeros((2, 4, 4, 3), np.uint8)}, r"nokey.npz has no array named x or x_train \(it has y\)$"),
        "float.npz": ({"x": np.zeros((2, 4, 4, 3), np.float32)},
                      r"float.npz: expected uint8 images shaped \(N, H, W, 3\), got float32 \(2, 4, 4, 3\)$"),
        "gray.npz": ({"x": np.zeros((2, 4, 4), np.uint8)}, r"expected uint8 images shaped \(N, H, W, 3\), got uint8 \(2, 4, 4\)$"),
        "rgba.npz": ({"x": np.zeros((2, 4, 4, 4), np.uint8)}, r"got uint8 \(2, 4, 4, 4\)$"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.savez(path, **content)
        with pytest.raises(UserError, match=message):
            load_dataset(_npz_cfg(path, good))
    truncated = tmp_path / "truncated.npz"  # a zip whose member's header and data are damaged
    damaged = bytearray(good.read_bytes())
    damaged[40:120] = bytes(80)
    truncated.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"truncated.npz is not a readable .npz file \((BadZipFile|OSError|ValueError|EOFError): "):
        load_dataset(_npz_cfg(truncated, good))
    with pytest.raises(UserError, match=r"^dataset npz needs data.test=PATH \(a .npz file or a glob of shards\)$"):
        load_dataset(resolve_config("vqvae", "npz", None, [f"data.train={good}"]).data)
    with pytest.raises(UserError, match=r"^data.train=.*/none-\*.npz matches no file$"):
        load_dataset(_npz_cfg(tmp_path / "none-*.npz", good))
    np.savez(tmp_path / "s-0.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(tmp_path / "s-1.npz", x=np.zeros((2, 6, 4, 3), np.uint8))
    with pytest.raises(UserError, match=r"^data.train: shards have different image shapes$"):
        load_dataset(_npz_cfg(tmp_path / "s-*.npz", good))
    np.savez(tmp_path / "big.npz", x=np.zeros((1, 6, 4, 3), np.uint8))
    with pytest.raises(UserError, match=r"^dataset npz: train images \(3, 4, 4\) and test images \(3, 6, 4\) differ in shape$"):
        load_dataset(_npz_cfg(good, tmp_path / "big.npz"))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match=r"^dataset npz: the train and test splits must both hold images$"):
        load_dataset(_npz_cfg(good, tmp_path / "empty.npz"))
    np.savez(tmp_path / "one.npz", x_test=np.full((1, 4, 4, 3), 7, np.uint8))
    data = load_dataset(_npz_cfg(good, tmp_path / "one.npz", "data.limit=1"))  # one image per split is enough
    assert data.train.shape == (1, 3, 4, 4) and data.test.tolist() == np.full((1, 3, 4, 4), 7).tolist()


def test_celeba_crop_of_a_portrait_an_odd_margin_and_a_grey_image(tmp_path):
    from PIL import Image

    portrait = Image.new("RGB", (41, 61), (0, 200, 0))  # the centred 41×41 square, red above, blue below
    portrait.paste((255, 0, 0), (0, 0, 41, 10))
    portrait.paste((0, 0, 255), (0, 51, 41, 61))
    portrait.save(tmp_path / "a.png")
    _banded(tmp_path / "b.png", 61, 41)  # an odd margin: 10 on the left, 10 on the right
    Image.new("L", (20, 20), 90).save(tmp_path / "c.png")  # greyscale: converted to RGB
    cfg = resolve_config("vqvae", "celeba", None, [f"data.root={tmp_path}", "data.image_size=16", "data.test_fraction=0.34"])
    data = load_dataset(cfg.data)
    green = torch.tensor([0, 200, 0], dtype=torch.uint8)[None, :, None, None]
    assert data.train.shape == (2, 3, 16, 16) and (data.train.int() - green.int()).abs().max() <= 1
    assert data.test.shape == (1, 3, 16, 16) and bool((data.test == 90).all())
