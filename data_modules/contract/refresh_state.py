"""A refresh's previous data set, read and checked: what it keeps for the next build."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import polars as pl

from data_modules.dataset.manifest import Manifest
from data_modules.dataset.schemas import SCHEMA_VERSION
from data_modules.util.atomic import read_json, write_json
from data_modules.util.errors import DataError
from data_modules.util.partition import PartitionSpec, in_partition

STATE_VERSION = 1


REFRESH_DIR = "refresh"


#: Skips a full build counts on raw rows a refresh does not read again: carried forward and added.
#: (Duplicates are not: the kept events keep theirs, and each build counts its window's afresh.)
CARRIED_SKIPS = ("empty_event_files", "event_texts_truncated")


#: Options that may change between a data set and its refresh: where the inputs are, the cutoff
#: (rolled forward), whether the new one is refreshable. Every other option must be the same.
MOVABLE_OPTIONS = (
    "raw", "out", "events", "users", "scenarios", "labels", "qa", "topics", "modalities_meta",
    "cutoff", "previous", "refreshable",
)  # fmt: skip


@dataclass
class RefreshState:
    """``refresh/state.json``: what a refresh needs of the raw files it does not read again."""

    options: dict
    cutoff: str
    partitions: int
    day_counts: list[list]  # [ISO day, raw events that day] in the build's time zone
    valued: dict[str, int]  # modality -> raw events with a value
    skipped: dict[str, int]  # CARRIED_SKIPS so far
    events_before_window: int  # cleaned events before the history window, so far
    version: int = STATE_VERSION
    schema_version: int = SCHEMA_VERSION
    files: list[str] = field(default_factory=list)

    def save(self, data: Path) -> None:
        write_json(data / REFRESH_DIR / "state.json", asdict(self))

    @classmethod
    def load(cls, data: str | Path) -> RefreshState:
        """The state of the data set ``data``, checked: a data set, of this version, refreshable."""
        data = Path(data)
        if not (data / "manifest.json").is_file():
            raise DataError(data, "--previous is not a data set (no manifest.json)",
                            expected="the folder of a finished `qanchor build`")  # fmt: skip
        version = read_json(data / "manifest.json").get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(data, f"--previous is a data set of another version (schema {version})",
                            expected=f"schema {SCHEMA_VERSION}: build it afresh from its raw logs")  # fmt: skip
        path = data / REFRESH_DIR / "state.json"
        if not path.is_file():
            raise DataError(data, "--previous keeps no refresh state (refresh/state.json)",
                            expected="a data set built with --refreshable true")  # fmt: skip
        raw = read_json(path)
        if raw.get("version") != STATE_VERSION or raw.get("schema_version") != SCHEMA_VERSION:
            raise DataError(path, f"refresh state of another version ({raw.get('version')}/{raw.get('schema_version')})",
                            expected=f"{STATE_VERSION}/{SCHEMA_VERSION}: build it afresh from its raw logs")  # fmt: skip
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in names})
        files = Manifest.load(data).files
        for rel in state.files:  # cheap here; each task checks the sha256 of the files it reads
            path, entry = data / rel, files.get(rel)
            if entry is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
                raise DataError(path, "kept events file missing, unlisted or of another size than the manifest's",
                                expected="the data set as its build left it")  # fmt: skip
        return state

    def check_options(self, options: dict, where: Path) -> None:
        """A refresh builds the same kind of data set: every option but the movable ones as before."""
        for key in sorted(set(options) | set(self.options)):
            if key in MOVABLE_OPTIONS:
                continue
            if options.get(key) != self.options.get(key):
                raise DataError(
                    where, f"this build's --{key} is {options.get(key)!r}, the previous data set's is "
                    f"{self.options.get(key)!r}",
                    expected="the previous build's options (only the raw files and the cutoff move)",
                )  # fmt: skip

    def day_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"day": [d for d, _ in self.day_counts], "len": [n for _, n in self.day_counts]},
            schema={"day": pl.String, "len": pl.UInt32},
        ).with_columns(pl.col("day").str.to_date())

    def kept_events(self, data: Path, spec: PartitionSpec) -> pl.LazyFrame | None:
        """The kept events of the users partition ``spec`` owns. Partition I of N is the I-th of N
        ranges of the same hash, so only the kept files whose range overlaps it are read, and only
        those reaching beyond it are filtered (none when the partitioning is yesterday's)."""
        i, n, m = spec.index, spec.count, self.partitions
        overlapping = [j for j in range(m) if j * n < (i + 1) * m and i * m < (j + 1) * n]
        names = [kept_name(PartitionSpec(j, m)) for j in overlapping]
        Manifest.load(data).verify(data, names)  # sizes and sha256: this build rests on them
        frames = []
        for j, name in zip(overlapping, names):
            lf = pl.scan_parquet(data / name)
            inside = i * m <= j * n and (j + 1) * n <= (i + 1) * m
            frames.append(lf if inside else lf.filter(in_partition(spec)))
        return pl.concat(frames, how="vertical") if frames else None


def kept_name(spec: PartitionSpec) -> str:
    return f"{REFRESH_DIR}/events/part-{spec.name}.parquet"
