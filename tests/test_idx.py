import gzip

import numpy as np
import pytest

from pqdjax.data import idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_roundtrip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = str(tmp_path / name)
    idx.write_idx(path, array)
    out = idx.read_idx(path)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_header_layout_is_big_endian(tmp_path):
    path = str(tmp_path / "x")
    idx.write_idx(path, np.array([[1, 2, 3]], np.int32))
    raw = open(path, "rb").read()
    # magic 0x00000C02 (int32, 2 dims), dims 1 and 3, then values big-endian.
    assert raw[:4] == bytes([0, 0, 0x0C, 2])
    assert raw[4:12] == bytes([0, 0, 0, 1, 0, 0, 0, 3])
    assert raw[12:16] == bytes([0, 0, 0, 1])


def test_missing_file(tmp_path):
    with pytest.raises(idx.IdxFormatError, match="does not exist"):
        idx.read_idx(str(tmp_path / "nope"))


def test_truncated_payload(tmp_path):
    path = str(tmp_path / "t")
    idx.write_idx(path, np.zeros((10, 4, 4), np.uint8))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    with pytest.raises(idx.IdxFormatError, match="truncated.*download it again"):
        idx.read_idx(path)


def test_truncated_header(tmp_path):
    path = str(tmp_path / "t")
    open(path, "wb").write(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(idx.IdxFormatError, match="truncated inside its header"):
        idx.read_idx(path)


def test_truncated_gzip(tmp_path):
    path = str(tmp_path / "t.gz")
    idx.write_idx(path, np.arange(1000, dtype=np.int32))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(idx.IdxFormatError, match="corrupt or truncated gzip"):
        idx.read_idx(path)


def test_trailing_bytes(tmp_path):
    path = str(tmp_path / "t")
    idx.write_idx(path, np.zeros((2, 2), np.uint8))
    open(path, "ab").write(b"xx")
    with pytest.raises(idx.IdxFormatError, match="longer than its header"):
        idx.read_idx(path)


def test_not_idx(tmp_path):
    path = str(tmp_path / "t.gz")
    open(path, "wb").write(gzip.compress(b"PNG and other things"))
    with pytest.raises(idx.IdxFormatError, match="not an IDX file"):
        idx.read_idx(path)
