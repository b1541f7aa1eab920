"""Distilled sets as PNGs in class folders with a manifest (pqdjax.data.image_folder)."""

import numpy as np
import pytest

from pqdjax.data import image_folder


@pytest.mark.parametrize("channels", [1, 3])
def test_a_set_reads_back_as_written(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 6, 5, channels), dtype=np.uint8)  # 12 classes: two-digit indices
    weights = rng.dirichlet(np.ones(3), size=12).astype(np.float32)
    names = [f"class/{c} name" for c in range(12)]
    image_folder.write_set(str(tmp_path), images, weights, names)
    got_images, labels, got_weights = image_folder.read_set(str(tmp_path / "manifest.csv"))
    np.testing.assert_array_equal(got_images, images.reshape((36,) + images.shape[2:]))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(12), 3))
    np.testing.assert_allclose(got_weights, weights.reshape(-1), rtol=1e-7)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders[:3] == ["000_class_0_name", "001_class_1_name", "002_class_2_name"] and folders[-1] == "011_class_11_name"


def test_class_folders_sort_in_label_order_for_many_classes():
    names = [image_folder.class_folder(c, "x", 1000) for c in range(1000)]
    assert sorted(names) == names and names[7] == "007_x"
    assert image_folder.class_folder(3, "", 10) == "003_class"


def test_png_needs_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        image_folder.png_bytes(np.zeros((4, 4, 3), np.float32))
