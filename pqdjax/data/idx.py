"""Reader and writer for the IDX format of (Fashion-)MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), the dimensions as big-endian uint32, then the values in
row-major order, big-endian. Files may be gzip-compressed (".gz").
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
from pqdjax.errors import InputError

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(InputError):
    """An IDX file is missing, truncated or not in IDX format."""


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise IdxFormatError(f"IDX file {path} does not exist.")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IdxFormatError(
            f"IDX file {path} is a corrupt or truncated gzip file ({e}); download it again."
        ) from e


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a native-endian array.

    Raises:
      IdxFormatError: the file is missing, not IDX, or shorter or longer than
        its header says.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IdxFormatError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})."
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"IDX file {path} is truncated inside its header; download it again.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise IdxFormatError(
            f"IDX file {path} is {what}: {len(data)} bytes for shape {shape}, expected "
            f"{expected}; download it again."
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray, compress: bool | None = None) -> None:
    """Writes `array` as an IDX file; gzipped when `compress` (default: path ends in .gz)."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}.")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(native.newbyteorder(">")).tobytes()
    if compress if compress is not None else path.endswith(".gz"):
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)
