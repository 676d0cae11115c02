"""Reading a large point cloud by row ranges, so that no process holds the whole file.

Two formats, with the same array names as the ``.npz`` cloud format (docs/point_clouds.md:
``interior``, ``boundary``, ``normals``, optional ``ghost``, ``test``, ``boundary_tags``,
``tag_names``):

* ``.npz`` (numpy's zip of ``.npy`` members, :func:`~dtpinn_dist.geometry.io.save_npz`): the
  ``.npy`` header of a member gives its shape and dtype; rows ``start:stop`` are read by seeking
  in the member -- direct for a stored (uncompressed) member, by streaming decompression of the
  bytes before it (16 MB at a time, nothing kept) for a compressed one (``np.savez_compressed``);
* HDF5 (``.h5`` / ``.hdf5``, h5py; the ``[io]`` extra): one dataset per array,
  ``dataset[start:stop]`` (:func:`save_h5` writes one).

Nothing is unpickled: object dtypes are refused. Every failure is one ``ValueError`` line naming
the file and the fix.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..resources import one_line, regular_file

__all__ = ["CloudFile", "save_h5", "SLICE_SUFFIXES"]

SLICE_SUFFIXES = (".npz", ".h5", ".hdf5")
_FIX = ("write it with dtpinn_dist.geometry.save_npz (or numpy.savez) or save_h5: plain float64 "
        "arrays interior, boundary, normals")


class CloudFile:
    """A point-cloud file opened for reading rows: ``shape(name)``, ``rows(name, start, stop)``,
    ``names``. Use as a context manager (closes the file)."""

    def __init__(self, path):
        self.path = regular_file(path, "point-cloud file", "give a regular .npz or .h5 file")
        suf = self.path.suffix.lower()
        if suf not in SLICE_SUFFIXES:
            raise ValueError(f"{self.path}: cannot read {suf!r} files by slices; use .npz or "
                             ".h5 / .hdf5 (HDF5)")
        self._h5 = suf != ".npz"
        self._meta = {}
        try:
            if self._h5:
                try:
                    import h5py
                except ImportError:
                    raise ValueError(f"{self.path}: reading HDF5 needs h5py (pip install "
                                     "'dtpinn-dist[io]')") from None
                self._f = h5py.File(self.path, "r")
                for name, ds in self._f.items():
                    if isinstance(ds, h5py.Dataset):
                        self._meta[name] = (tuple(ds.shape), ds.dtype, None)
            else:
                self._f = zipfile.ZipFile(self.path)
                for info in self._f.infolist():
                    if info.filename.endswith(".npy"):
                        self._meta[info.filename[:-4]] = self._npy_header(info)
        except ValueError:
            self.close()
            raise
        except Exception as exc:  # OSError, BadZipFile, h5py's errors: a bad file, one line
            self.close()
            raise ValueError(f"{self.path}: not a readable point-cloud file "
                             f"({one_line(exc)}); {_FIX}") from None
        for name, (shape, dtype, _) in self._meta.items():
            if dtype.hasobject:
                self.close()
                raise ValueError(f"{self.path}: array {name!r} holds Python objects (pickled); "
                                 f"{_FIX}")

    def _npy_header(self, info):
        with self._f.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
        if fortran and len(shape) > 1:
            raise ValueError(f"{self.path}: array {info.filename[:-4]!r} is stored in Fortran "
                             f"order; {_FIX}")
        if info.file_size < offset + int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{self.path}: array {info.filename[:-4]!r} is truncated; {_FIX}")
        return tuple(shape), dtype, (info, offset)

    @property
    def names(self) -> list:
        return sorted(self._meta)

    def shape(self, name: str) -> tuple | None:
        """The array's shape, or None when the file has no such array."""
        m = self._meta.get(name)
        return None if m is None else m[0]

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of array ``name`` (the whole array by default)."""
        shape, dtype, where = self._meta[name]
        n = shape[0] if shape else 1
        stop = n if stop is None else min(int(stop), n)
        start = max(0, min(int(start), stop))
        if self._h5:
            return np.asarray(self._f[name][start:stop] if shape else self._f[name][()])
        info, offset = where
        row = int(np.prod(shape[1:])) * dtype.itemsize if shape else dtype.itemsize
        with self._f.open(info) as fh:
            fh.seek(offset + start * row)  # compressed: decompresses and drops what it skips
            buf = fh.read((stop - start) * row)
        if len(buf) != (stop - start) * row:
            raise ValueError(f"{self.path}: array {name!r} is truncated; {_FIX}")
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + tuple(shape[1:]) if shape
                                                       else ()).copy()

    def close(self):
        f = getattr(self, "_f", None)
        if f is not None:
            f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def save_h5(path, cloud) -> Path:
    """Write ``cloud`` as HDF5: one dataset per array, the ``.npz`` format's names (the numeric
    arrays; boundary part names are not stored). Needs h5py."""
    import h5py

    path = Path(path)
    arrays = {"interior": cloud.interior, "boundary": cloud.boundary, "normals": cloud.normals}
    if cloud.ghost is not None:
        arrays["ghost"] = cloud.ghost
    if cloud.test is not None:
        arrays["test"] = cloud.test
    tags = getattr(cloud, "boundary_tags", None)
    if tags is not None:
        arrays["boundary_tags"] = np.asarray(tags, dtype=np.int64)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=np.ascontiguousarray(v))
    return path
