"""Model registry: global versions -> content-addressed LiteRT files and device parts.

Files are named by their SHA-256 and written atomically under `<data dir>/files/`; the
database rows that point at them are written in one transaction afterwards. A crash between
the two leaves at most an unreferenced file, which the next registration of the same bytes
reuses. Device parts are `.npz` of named float32 arrays, read with `allow_pickle=False`.

A device downloads the base LiteRT file only when its hash differs from the one it holds,
and the (small) device part per version.
"""

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select

from coordinator import db
from coordinator.errors import Invalid, NotFound
from model.checkpoint import atomic_write_bytes

__all__ = [
    "FileInfo",
    "VersionInfo",
    "Registry",
    "pack_device_part",
    "unpack_device_part",
]


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionInfo:
    id: int
    parent: int | None
    created_at: datetime
    base: FileInfo  # the LiteRT file (int8 base, infer + train signatures)
    device_part: FileInfo  # the trainable part, npz
    metrics: dict


def pack_device_part(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays -> npz bytes (float32; numeric only, so never a pickle)."""
    if not arrays:
        raise Invalid("device part has no arrays")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(arrays[k], np.float32) for k in sorted(arrays)})
    return buf.getvalue()


def unpack_device_part(payload: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise Invalid(f"device part is not a valid npz of arrays: {e}") from e


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _version_info(row: db.Version, files: dict[str, int]) -> VersionInfo:
    return VersionInfo(
        id=row.id,
        parent=row.parent,
        # SQLite hands back naive datetimes; every timestamp is written in UTC.
        created_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC),
        base=FileInfo(row.base_sha256, files[row.base_sha256]),
        device_part=FileInfo(row.device_sha256, files[row.device_sha256]),
        metrics=dict(row.metrics or {}),
    )


class Registry:
    """Versions and their files, stored in `database` and under `data_dir/files`."""

    def __init__(self, database: db.Database, data_dir: Path) -> None:
        self.db = database
        self.files_dir = Path(data_dir) / "files"

    # -- files ------------------------------------------------------------------------------
    def _relpath(self, sha: str) -> str:
        return f"{sha[:2]}/{sha}"

    def _store(self, s, payload: bytes) -> FileInfo:
        sha = _sha256(payload)
        path = self.files_dir / self._relpath(sha)
        if not path.exists() or path.stat().st_size != len(payload):
            atomic_write_bytes(path, payload)
        if s.get(db.File, sha) is None:
            row = db.File(sha256=sha, path=self._relpath(sha), size=len(payload))
            row.created_at = db.utcnow()
            s.add(row)
        return FileInfo(sha, len(payload))

    def file_info(self, sha256: str) -> FileInfo:
        with self.db.transaction() as s:
            row = s.get(db.File, sha256.lower())
            if row is None:
                raise NotFound(f"no file with sha256 {sha256}")
            return FileInfo(row.sha256, row.size)

    def file_path(self, sha256: str) -> Path:
        """Where the bytes of a registered file are (for streaming them to a device)."""
        with self.db.transaction() as s:
            row = s.get(db.File, sha256.lower())
            if row is None or row.path is None:
                raise NotFound(f"no file with sha256 {sha256}")
            return self.files_dir / row.path

    def read_file(self, sha256: str) -> bytes:
        payload = self.file_path(sha256).read_bytes()
        if _sha256(payload) != sha256.lower():
            raise OSError(f"file {sha256} is corrupted on disk")
        return payload

    # -- versions ---------------------------------------------------------------------------
    def register(
        self,
        model: bytes,
        device_part: dict[str, np.ndarray],
        metrics: dict | None = None,
        parent: int | None = None,
    ) -> VersionInfo:
        """A new global version (id assigned by the database)."""
        if len(model) < 8 or model[4:8] != b"TFL3":
            raise Invalid("model is not a LiteRT flatbuffer (no TFL3 identifier)")
        packed = pack_device_part(device_part)
        with self.db.transaction() as s:
            if parent is not None and s.get(db.Version, parent) is None:
                raise NotFound(f"parent version {parent} does not exist")
            base = self._store(s, model)
            dev = self._store(s, packed)
            s.flush()  # file rows before the version row that references them
            row = db.Version(
                parent=parent,
                created_at=db.utcnow(),
                base_sha256=base.sha256,
                device_sha256=dev.sha256,
                metrics=dict(metrics or {}),
            )
            s.add(row)
            s.flush()
            return _version_info(row, {base.sha256: base.size, dev.sha256: dev.size})

    def _load(self, s, row: db.Version | None, what: str) -> VersionInfo:
        if row is None:
            raise NotFound(f"no version {what}")
        shas = (row.base_sha256, row.device_sha256)
        q = select(db.File.sha256, db.File.size).where(db.File.sha256.in_(shas))
        sizes = dict(s.execute(q).all())
        return _version_info(row, sizes)

    def get(self, version_id: int) -> VersionInfo:
        with self.db.transaction() as s:
            return self._load(s, s.get(db.Version, version_id), str(version_id))

    def current(self) -> VersionInfo | None:
        """The newest version (highest id), or None before bootstrap."""
        with self.db.transaction() as s:
            row = s.scalars(select(db.Version).order_by(db.Version.id.desc()).limit(1)).first()
            return None if row is None else self._load(s, row, "current")

    def versions(self) -> list[VersionInfo]:
        with self.db.transaction() as s:
            rows = s.scalars(select(db.Version).order_by(db.Version.id)).all()
            return [self._load(s, r, str(r.id)) for r in rows]

    def set_metrics(self, version_id: int, metrics: dict) -> VersionInfo:
        """Merge `metrics` into the version's (evaluation results arrive after registration)."""
        with self.db.transaction() as s:
            row = s.get(db.Version, version_id)
            info = self._load(s, row, str(version_id))
            row.metrics = {**info.metrics, **metrics}
            return self._load(s, row, str(version_id))

    def model_bytes(self, version_id: int) -> bytes:
        return self.read_file(self.get(version_id).base.sha256)

    def device_part_bytes(self, version_id: int) -> bytes:
        return self.read_file(self.get(version_id).device_part.sha256)

    def device_part(self, version_id: int) -> dict[str, np.ndarray]:
        return unpack_device_part(self.device_part_bytes(version_id))

    def bootstrap(self, model_path: Path, device_part_path: Path) -> VersionInfo:
        """Version 1 from the shipped files, if the registry is empty; else the current one."""
        current = self.current()
        if current is not None:
            return current
        device = unpack_device_part(Path(device_part_path).read_bytes())
        return self.register(Path(model_path).read_bytes(), device, {"source": "shipped base"})
