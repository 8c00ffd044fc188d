"""The raw folder, read and checked once: :class:`RawInputs`.

Every later stage takes this object (or, in another process of a partitioned build, its JSON copy
in the build plan), never a raw path to open and check again. The small files (scenarios,
modalities, topics, a refresh's previous state) are held as values; the tables are held as checked
handles (schema, ids, labels) whose rows a partition reads for its own users. The events' rows are
checked where they are streamed (the build's scatter or stats pass), the one read they get.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.contract.columns import EVENTS_COLUMNS, check_columns, check_users_schema, read_schema
from data_modules.contract.json_files import read_json_file
from data_modules.contract.modalities import SHAPE as MODALITIES_SHAPE
from data_modules.contract.modalities import ModalityMeta, parse_modalities_meta
from data_modules.contract.refresh_state import RefreshState
from data_modules.contract.scenarios import SHAPE as SCENARIOS_SHAPE
from data_modules.contract.scenarios import Scenario, parse_scenarios
from data_modules.contract.tables import read_external_qa, read_labels, read_users
from data_modules.contract.topics import SHAPE as TOPICS_SHAPE
from data_modules.contract.topics import Topic, parse_topics, topic
from data_modules.util.errors import DataError


@dataclass(frozen=True)
class InputPaths:
    """Where each raw file is (``--raw DIR`` plus per-file overrides); nothing read yet."""

    events: tuple[Path, ...]
    scenarios: Path
    users: Path | None = None
    labels: Path | None = None
    qa: Path | None = None
    topics: Path | None = None
    modalities: Path | None = None

    @classmethod
    def locate(
        cls,
        raw: str | Path | None,
        *,
        events: str | Path | None = None,
        users: str | Path | None = None,
        scenarios: str | Path | None = None,
        labels: str | Path | None = None,
        qa: str | Path | None = None,
        topics: str | Path | None = None,
        modalities_meta: str | Path | None = None,
    ) -> InputPaths:
        root = Path(raw) if raw is not None else None

        def pick(explicit, *names):
            if explicit is not None:
                path = Path(explicit)
                if not path.exists():
                    raise DataError(path, "file not found")
                return path
            for name in names if root is not None else ():
                if (root / name).exists():
                    return root / name
            return None

        if root is not None and not root.is_dir():
            raise DataError(root, "not a folder" if root.exists() else "folder not found",
                            expected="the raw folder: events/, scenarios.json [, users.parquet, ...]")  # fmt: skip
        events_path = pick(events, "events", "events.parquet")
        if events_path is None:
            raise DataError(
                root or "<no --raw>", "no events found", expected="events/*.parquet or events.parquet"
            )
        if events_path.is_dir():
            # flat or partitioned folders (events/day=2026-03-01/*.parquet); hidden files are not data
            files = sorted(
                f
                for f in events_path.rglob("*.parquet")
                if not any(part.startswith(".") for part in f.relative_to(events_path).parts)
            )
            if not files:
                raise DataError(events_path, "directory holds no *.parquet files")
        else:
            files = [events_path]
        scen = pick(scenarios, "scenarios.json")
        if scen is None:
            raise DataError(root or "<no --raw>", "no scenarios.json found",
                            expected="scenarios.json: " + SCENARIOS_SHAPE)  # fmt: skip
        return cls(
            events=tuple(files), scenarios=scen, users=pick(users, "users.parquet"),
            labels=pick(labels, "labels.parquet"), qa=pick(qa, "qa.parquet"), topics=pick(topics, "topics.json"),
            modalities=pick(modalities_meta, "modalities.json"),
        )  # fmt: skip

    def files(self) -> list[Path]:
        extra = (self.users, self.scenarios, self.labels, self.qa, self.topics, self.modalities)
        return [*self.events, *(p for p in extra if p is not None)]

    def listing(self) -> list[list]:
        """Every file with its size and modification time: a cheap identity of the raw data."""
        out = []
        for p in self.files():
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        return out


@dataclass(frozen=True)
class UsersTable:
    """``users.parquet``: ids checked (present, non-empty, unique), numeric feature columns."""

    path: Path
    features: tuple[str, ...]

    def read(self, use_tabular: bool, owned: pl.Expr | None = None) -> tuple[pl.DataFrame | None, list[str]]:
        """The rows ``owned`` keeps (a partition's), features checked finite when used."""
        return read_users(self.path, use_tabular, owned)


@dataclass(frozen=True)
class LabelsTable:
    """``labels.parquet``: every row checked (0/1, known scenario and user, no duplicate)."""

    path: Path
    scenarios: tuple[str, ...]  # the scenarios it labels

    def read(self, scenario_names: set[str], owned: pl.Expr | None = None) -> pl.DataFrame:
        return read_labels(self.path, scenario_names, owned)


@dataclass(frozen=True)
class QATable:
    """``qa.parquet``: externally written (user, query, answer) rows, every text non-empty."""

    path: Path

    def read(self, owned: pl.Expr | None = None) -> pl.DataFrame:
        return read_external_qa(self.path, owned)


@dataclass(frozen=True)
class RawInputs:
    """A raw folder, read once and checked: typed, immutable values for every later stage."""

    paths: InputPaths
    events: tuple[Path, ...]  # the events files with rows, schemas checked
    empty_events: tuple[Path, ...]  # events files without rows (a counted skip)
    scenarios: tuple[Scenario, ...]
    users: UsersTable | None = None
    labels: LabelsTable | None = None
    qa: QATable | None = None
    modalities: tuple[ModalityMeta, ...] | None = None  # modalities.json, when given
    topics: tuple[Topic, ...] | None = None  # topics.json, when given
    previous: RefreshState | None = None  # a refresh's previous data set

    @classmethod
    def read(cls, paths: InputPaths, *, previous: str | Path | None = None) -> RawInputs:
        """Read and check every file of ``paths`` (and a refresh's ``previous`` data set's state):
        the first wrong shape is a DataError naming the file, the entry, column or row and what was
        expected. Nothing is written."""
        scenarios = parse_scenarios(paths.scenarios, read_json_file(paths.scenarios, SCENARIOS_SHAPE))
        modalities = (
            parse_modalities_meta(paths.modalities, read_json_file(paths.modalities, MODALITIES_SHAPE))
            if paths.modalities else None
        )  # fmt: skip
        topics = (
            parse_topics(paths.topics, read_json_file(paths.topics, TOPICS_SHAPE)) if paths.topics else None
        )
        state = RefreshState.load(previous) if previous else None
        events, empty = [], []
        for path in paths.events:
            check_columns(path, read_schema(path), EVENTS_COLUMNS)
            (events if _row_count(path) else empty).append(path)
        if not events and state is None:
            raise DataError(paths.events[0].parent, "every events file is empty", expected="events with rows")
        users, user_ids = None, None
        if paths.users is not None:
            users = UsersTable(paths.users, tuple(check_users_schema(paths.users, read_schema(paths.users))))
            user_ids, _ = read_users(paths.users, False)  # ids: present, non-empty, unique
        labels = None
        if paths.labels is not None:
            frame = read_labels(paths.labels, {s.name for s in scenarios})
            _check_label_users(paths.labels, frame, user_ids, events)
            labels = LabelsTable(paths.labels, tuple(sorted(set(frame["scenario"].to_list()))))
        labelled = set(labels.scenarios) if labels else set()
        for s in scenarios:
            if not s.has_rule and s.name not in labelled:
                raise DataError(paths.scenarios, "has neither a rule nor labels", entry=repr(s.name),
                                expected="a rule {\"categories\": [...]} or rows of this scenario in labels.parquet"
                                + ("" if paths.labels else " (the raw folder has none)"))  # fmt: skip
        qa = None
        if paths.qa is not None:
            read_external_qa(paths.qa)  # every row checked once here; tasks read their users' rows
            qa = QATable(paths.qa)
        return cls(
            paths, tuple(events), tuple(empty), scenarios, users, labels, qa, modalities, topics, state
        )

    # -- the copy a partitioned build's plan carries to its other processes ----------------------
    def to_json(self) -> dict[str, Any]:
        def s(p):
            return None if p is None else str(p)

        return {
            "paths": {k: ([str(x) for x in v] if k == "events" else s(v)) for k, v in asdict(self.paths).items()},
            "events": [str(p) for p in self.events], "empty_events": [str(p) for p in self.empty_events],
            "scenarios": [sc.to_json() for sc in self.scenarios],
            "users": None if self.users is None else {"path": str(self.users.path), "features": list(self.users.features)},
            "labels": None if self.labels is None else {"path": str(self.labels.path), "scenarios": list(self.labels.scenarios)},
            "qa": None if self.qa is None else str(self.qa.path),
            "modalities": None if self.modalities is None else [asdict(m) for m in self.modalities],
            "topics": None if self.topics is None else [t.to_json() for t in self.topics],
            "previous": None if self.previous is None else asdict(self.previous),
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RawInputs:
        def p(x):
            return None if x is None else Path(x)

        raw_paths = d["paths"]
        paths = InputPaths(
            **{k: (tuple(Path(x) for x in v) if k == "events" else p(v)) for k, v in raw_paths.items()}
        )
        return cls(
            paths=paths, events=tuple(Path(x) for x in d["events"]), empty_events=tuple(Path(x) for x in d["empty_events"]),
            scenarios=tuple(_scenario(x) for x in d["scenarios"]),
            users=None if d["users"] is None else UsersTable(Path(d["users"]["path"]), tuple(d["users"]["features"])),
            labels=None if d["labels"] is None else LabelsTable(Path(d["labels"]["path"]), tuple(d["labels"]["scenarios"])),
            qa=None if d["qa"] is None else QATable(Path(d["qa"])),
            modalities=None if d["modalities"] is None else tuple(ModalityMeta(**m) for m in d["modalities"]),
            topics=None if d["topics"] is None else tuple(topic(**t) for t in d["topics"]),
            previous=None if d["previous"] is None else RefreshState(**d["previous"]),
        )  # fmt: skip


def read_inputs(raw: str | Path | None, *, previous: str | Path | None = None, **overrides) -> RawInputs:
    """:meth:`InputPaths.locate` then :meth:`RawInputs.read`: the raw folder, checked, in one call."""
    return RawInputs.read(InputPaths.locate(raw, **overrides), previous=previous)


def _scenario(d: dict) -> Scenario:
    rule = d.get("rule") or {}
    return Scenario(d["name"], d["query"], d.get("domain", ""), tuple(rule.get("categories", ())),
                    tuple(rule.get("modalities", ())), d.get("description", ""))  # fmt: skip


def _row_count(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(path, f"corrupt parquet metadata: {err}") from None


def _check_label_users(
    path: Path, labels: pl.DataFrame, user_ids: pl.DataFrame | None, events: list[Path]
) -> None:
    """Every labelled user is in the users table (``user_ids``) or the events (a user the data never
    mentions is a typo or a join gone wrong; one the build drops for want of history is a counted
    skip there)."""
    pending = labels.with_row_index("row").select("row", "user_id")
    if user_ids is not None:
        pending = pending.join(user_ids.select("user_id"), on="user_id", how="anti")
    if pending.height and events:
        seen = pl.concat([pl.scan_parquet(e).select(pl.col("user_id").cast(pl.String)) for e in events])
        pending = pending.join(seen.unique().collect(), on="user_id", how="anti")
    if pending.height:
        r = pending.sort("row").row(0, named=True)
        raise DataError(path, f"label for unknown user '{r['user_id']}'", column="user_id", row=r["row"],
                        expected="a user_id of users.parquet or of the events")  # fmt: skip
