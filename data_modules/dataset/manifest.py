"""``manifest.json``: what a built data set holds, with every file's rows and sha256."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_modules.dataset.schemas import SCHEMA_VERSION
from data_modules.util.atomic import read_json, write_json
from data_modules.util.errors import DataError
from data_modules.util.hashing import sha256_file

MANIFEST = "manifest.json"


def file_entry(root: str | Path, rel: str, rows: int | None) -> dict:
    path = Path(root) / rel
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class Manifest:
    """The build's record of a UserU data set. Written last: no manifest, no data set."""

    schema_version: int
    modalities: list[str]
    event_modalities: list[str]
    max_events: dict[str, int]
    tabular_features: list[str]
    tabular_mean: list[float]
    tabular_std: list[float]
    cutoff: str
    history_days: int
    future_days: int
    counts: dict
    skipped: dict[str, int]
    files: dict[str, dict]
    config: dict
    encoders: dict[str, dict] = field(default_factory=dict)
    timezone: str = "UTC"
    modality_meta: dict[str, dict] = field(default_factory=dict)
    qa: dict = field(default_factory=dict)  # answers per source, reflection counts, topic report, QA versions
    # event modality -> the categories of the history events the model sees, sorted (count features
    # and the future anchor's targets are laid out in this order)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def save(self, root: str | Path) -> None:
        write_json(Path(root) / MANIFEST, asdict(self))

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        path = Path(root) / MANIFEST
        raw = read_json(path, missing="no manifest: not a built data set (run `qanchor build`)")
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                path,
                f"schema_version {raw.get('schema_version')}",
                expected=f"{SCHEMA_VERSION} (rebuild the data set)",
            )
        return cls(**raw)

    @property
    def shard_files(self) -> list[str]:
        return sorted(k for k in self.files if k.startswith("shards/"))

    def verify(self, root: str | Path, names: list[str] | None = None) -> None:
        """Check that files exist with the recorded size and sha256; raise naming the first mismatch.
        By default every file the data set is used through (not ``refresh/``, checked by a refresh)."""
        root = Path(root)
        for name in (
            names if names is not None else sorted(k for k in self.files if not k.startswith("refresh/"))
        ):
            verify_file(root / name, self.files[name])


def verify_file(path: Path, entry: dict) -> None:
    """``path`` exists with the size and sha256 of its manifest ``entry``, else a DataError naming it."""
    if not path.exists():
        raise DataError(path, "listed in the manifest but missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(path, f"size {size} bytes differs from the manifest's {entry['bytes']} (truncated?)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise DataError(
            path, f"checksum mismatch: sha256 {digest[:12]}... != manifest {entry['sha256'][:12]}..."
        )
