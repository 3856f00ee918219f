"""Every SOURCE kind and every bad input: tiny npz files and image folders written in tmp_path."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellnet.constants import PBC_CLASSES
from cellnet.data import load, parse_source, read_image_file
from cellnet.data.sources import canonical_class_name
from cellnet.errors import DataError


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _medmnist(path: Path, size: int = 28, counts: tuple[int, int, int] = (6, 3, 4)) -> Path:
    arrays = {}
    for k, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        arrays[f"{split}_images"] = _pixels(n, size, seed=k)
        arrays[f"{split}_labels"] = (np.arange(n) * 3 % 8).reshape(n, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize(
    ("text", "kind", "extra"),
    [
        ("synthetic", "synthetic", {"n": None}),
        ("synthetic:4000", "synthetic", {"n": 4000}),
        ("bloodmnist", "bloodmnist", {"size": None, "splits": None}),
        ("bloodmnist:128", "bloodmnist", {"size": 128}),
        ("bloodmnist:64:test", "bloodmnist", {"size": 64, "splits": ("test",)}),
    ],
)
def test_parse_named_sources(text: str, kind: str, extra: dict) -> None:
    parsed = parse_source(text)
    assert parsed.kind == kind
    for key, value in extra.items():
        assert getattr(parsed, key) == value


def test_parse_paths(tmp_path: Path) -> None:
    npz = _medmnist(tmp_path / "m.npz")
    assert parse_source(str(npz)).splits is None
    assert parse_source(f"{npz}:train+val").splits == ("train", "val")
    assert parse_source(f"{npz}:test").splits == ("test",)
    assert parse_source(str(tmp_path)).kind == "folder"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty data source"),
        ("synthetic:lots", "synthetic:N"),
        ("bloodmnist:100", "BloodMNIST size must be one of"),
        ("bloodmnist:training", "bad split 'training'"),
        ("nosuchkind:3", "unknown data source"),
        ("/no/such/folder", "does not exist"),
        ("/no/such/file.npz", "does not exist"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_source(text)


def test_bad_split_and_non_npz_file(tmp_path: Path) -> None:
    npz = _medmnist(tmp_path / "m.npz")
    with pytest.raises(DataError, match="bad split 'tset'"):
        parse_source(f"{npz}:tset")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(DataError, match="not an .npz"):
        parse_source(str(text))


# ------------------------------------------------------------------------------------------------ npz


def test_plain_npz_with_classes_ids_and_resize(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    images = _pixels(5, 40)
    np.savez(
        path,
        images=images,
        labels=np.array([[0], [1], [2], [1], [0]]),
        classes=np.array(["a", "b", "c"]),
        ids=np.array([f"img{i}" for i in range(5)]),
    )
    data = load(str(path), image_size=32)
    assert data.images.shape == (5, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 1, 0]
    assert data.classes == ("a", "b", "c")
    assert data.ids.tolist() == [f"img{i}" for i in range(5)]
    same = load(str(path), image_size=40)
    np.testing.assert_array_equal(same.images, images)  # no resize at the stored size


def test_plain_npz_defaults_grayscale_and_eight_classes(tmp_path: Path) -> None:
    path = tmp_path / "gray.npz"
    gray = _pixels(8, 16)[..., 0]
    np.savez(path, images=gray, labels=np.arange(8))
    data = load(str(path), image_size=16)
    assert data.images.shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(data.images[..., 1], gray)
    assert data.classes == PBC_CLASSES  # 8 classes without names: the BloodMNIST order
    assert data.ids[3] == "gray.npz:3"
    np.savez(tmp_path / "three.npz", images=gray[:3], labels=np.arange(3))
    assert load(str(tmp_path / "three.npz"), image_size=16).classes == ("class_0", "class_1", "class_2")


def test_medmnist_splits_and_ids(tmp_path: Path) -> None:
    path = _medmnist(tmp_path / "bloodmnist.npz", size=28)
    default = load(str(path), image_size=28)
    assert len(default) == 6 + 3  # train+val by default; test stays held out
    assert default.ids[0] == "bloodmnist.npz:train/0" and default.ids[6] == "bloodmnist.npz:val/0"
    test = load(f"{path}:test", image_size=32)
    assert test.classes == PBC_CLASSES  # classes are counted over all splits, not the chosen ones
    assert len(test) == 4 and test.images.shape[1:] == (32, 32, 3) and test.ids[1] == "bloodmnist.npz:test/1"
    everything = load(f"{path}:train+val+test", image_size=28)
    assert len(everything) == 13 and everything.classes == PBC_CLASSES
    np.savez(tmp_path / "trainonly.npz", train_images=_pixels(2, 8), train_labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="has no split 'val'"):
        load(str(tmp_path / "trainonly.npz"), image_size=8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pictures": np.zeros((2, 8, 8, 3), np.uint8)}, "expected `images` \\+ `labels`"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "no key 'labels'"),
        ({"images": np.zeros((2, 8, 8, 3), np.float32), "labels": np.zeros(2)}, "expected uint8 pixels"),
        ({"images": np.zeros((2, 8, 8, 5), np.uint8), "labels": np.zeros(2, int)}, "expected shape"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.zeros(3, int)}, "has 3 labels but"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0.0, 1.5])}, "index 1 is 1.5"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array(["a", "b"])}, "must be integers"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, -1])}, "index 1 is -1"),
        (
            {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, 2]), "classes": np.array(["a", "b"])},
            "label at index 1 is 2, expected 0..1",
        ),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.zeros((2, 2), int)}, "shape N or N×1"),
        ({"images": np.zeros((0, 8, 8, 3), np.uint8), "labels": np.zeros(0, int)}, "no images"),
    ],
)
def test_npz_bad_input(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load(str(path), image_size=8)
    assert "bad.npz" in str(info.value)


def test_npz_split_suffix_on_plain_file_and_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, images=_pixels(2, 8), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="no MedMNIST splits"):
        load(f"{path}:test", image_size=8)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="cannot read .*broken.npz"):
        load(str(broken), image_size=8)


# ------------------------------------------------------------------------------------------------ folders


def _write_folder(root: Path) -> None:
    """Three PBC classes under alias names, every suffix, mode and size; one corrupt file; one stray text file."""
    rng = np.random.default_rng(0)
    specs = {
        "Immature_Granulocytes": [("a.png", "RGB", 50), ("b.jpg", "L", 70)],
        "basophils": [("c.bmp", "RGB", 30), ("d.tif", "RGBA", 45), ("e.PNG", "P", 64)],
        "Platelet": [("f.jpeg", "RGB", 96), ("g.tiff", "L", 20)],
    }
    for folder, files in specs.items():
        (root / folder).mkdir(parents=True)
        for name, mode, size in files:
            pixels = rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / folder / name)
    (root / "Platelet" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "basophils" / "notes.txt").write_text("not an image")


def test_folder_pbc_order_modes_sizes_and_skipped_corrupt(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    with pytest.warns(UserWarning) as caught:
        data = load(str(tmp_path), image_size=24)
    messages = "\n".join(str(w.message) for w in caught)
    assert "Platelet/broken.png" in messages and "1 unreadable" in messages
    assert "basophils/notes.txt" in messages
    assert data.classes == ("basophil", "ig", "platelet")  # PBC order and names, not folder order
    assert data.images.shape == (7, 24, 24, 3) and data.images.dtype == np.uint8
    by_id = dict(zip(data.ids.tolist(), data.labels.tolist()))
    assert by_id["Immature_Granulocytes/b.jpg"] == 1 and by_id["basophils/d.tif"] == 0 and by_id["Platelet/g.tiff"] == 2
    assert "Platelet/broken.png" not in by_id
    gray = data.images[data.ids.tolist().index("Platelet/g.tiff")]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale became RGB


def test_folder_strict_makes_corrupt_file_an_error(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="Platelet/broken.png"):
            load(str(tmp_path), image_size=24, strict=True)


def test_folder_other_names_sorted(tmp_path: Path) -> None:
    for name in ("zebra", "apple"):
        (tmp_path / name).mkdir()
        Image.fromarray(_pixels(1, 12)[0]).save(tmp_path / name / "x.png")
    data = load(str(tmp_path), image_size=12)
    assert data.classes == ("apple", "zebra") and data.ids.tolist() == ["apple/x.png", "zebra/x.png"]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load(str(tmp_path / "empty_root"))
    root = tmp_path / "data"
    (root / "basophil").mkdir(parents=True)
    (root / "ig").mkdir()
    Image.fromarray(_pixels(1, 12)[0]).save(root / "basophil" / "x.png")
    with pytest.raises(DataError, match="class folder .*ig.* has no images"):
        load(str(root))


def test_canonical_class_names() -> None:
    assert canonical_class_name("Immature granulocytes") == "ig"
    assert canonical_class_name("immature_granulocyte") == "ig"
    assert canonical_class_name("NEUTROPHILS") == "neutrophil"
    assert canonical_class_name("banana") is None


def test_read_image_file(tmp_path: Path) -> None:
    path = tmp_path / "cell.png"
    Image.fromarray(_pixels(1, 50)[0]).convert("RGBA").save(path)
    pixels = read_image_file(path, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    with pytest.raises(DataError, match="does not exist"):
        read_image_file(tmp_path / "missing.png", 32)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read image .*bad.jpg"):
        read_image_file(tmp_path / "bad.jpg", 32)


# ------------------------------------------------------------------------------------ bloodmnist / synthetic


def test_bloodmnist_from_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _medmnist(tmp_path / "bloodmnist_128.npz", size=20)  # a tiny stand-in with the real file's name and keys
    data = load("bloodmnist:128", image_size=16, cache_dir=str(tmp_path))
    assert len(data) == 9 and data.images.shape[1:] == (16, 16, 3) and data.classes == PBC_CLASSES
    assert data.ids[0] == "bloodmnist_128.npz:train/0"
    monkeypatch.setenv("CELLNET_CACHE", str(tmp_path))
    assert len(load("bloodmnist:test", image_size=96)) == 4  # bare size: smallest >= 96 is 128
    _medmnist(tmp_path / "bloodmnist_64.npz", size=20, counts=(2, 2, 2))
    assert len(load("bloodmnist", image_size=64)) == 4


def test_bloodmnist_offline_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "medmnist", None)  # the package is not installed
    with pytest.raises(DataError) as info:
        load("bloodmnist:128", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "pip install 'cellnet[medmnist]'" in message
    assert str(tmp_path / "bloodmnist_128.npz") in message and "zenodo.org" in message

    def offline(**_: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(BloodMNIST=offline))
    with pytest.raises(DataError, match="could not download BloodMNIST.*network is unreachable.*save it as"):
        load("bloodmnist:64", cache_dir=str(tmp_path))


def test_synthetic_source() -> None:
    data = load("synthetic:60", image_size=32, seed=3)
    assert data.images.shape[1:] == (32, 32, 3) and data.classes == PBC_CLASSES
    assert len(data) >= 60
    again = load("synthetic:60", image_size=32, seed=3)
    np.testing.assert_array_equal(data.images, again.images)
