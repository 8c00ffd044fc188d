"""The streaming dataset behind both DataModules: reads shards by row group, yields collated batches.

Each (rank, worker) follows its :mod:`~data_modules.loading.plan` and reads only the row groups its
samples live in, keeping at most the row groups its shuffle buffer spans. Event ids become vectors
here, on the data side, from the memory-mapped vocabulary. The state is two integers (epoch,
batches served by this worker) and is identical on every rank, so a checkpoint written by rank 0
resumes every rank exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_modules.encode.dataset import load_vectors
from data_modules.loading.collate import (
    cutoff_ms,
    pad_categories,
    pad_event_ages,
    pad_events,
    pad_ragged,
    pad_token_ids,
)
from data_modules.loading.plan import PlanSpec, WorkerPlan, make_worker_plan, steps_per_epoch, unit_order
from data_modules.util.errors import DataError
from data_modules.util.hashing import stable_hash64

# Fast tokenizers in forked workers: avoid the fork-after-parallelism warning and deadlock risk.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Units:
    """The catalogue of readable units (row groups), optionally restricted to some rows each."""

    files: tuple[str, ...]  # shard paths
    shard: np.ndarray  # [U] shard index of each unit
    row_group: np.ndarray  # [U] row group index within its shard
    rows: tuple[np.ndarray, ...]  # [U] row indices within the row group that are samples
    labels: tuple[np.ndarray, ...] | None = None  # [U] label per sample row (scenario mode)
    lengths: tuple[np.ndarray, ...] | None = None  # [U] event tokens per sample row (length balancing)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows], dtype=np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.sizes.sum())


def open_parquet(path: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(path, "shard file not found") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(path, f"not a readable parquet file (truncated or corrupt?): {err}") from None


def scan_units(
    files: list[str], labels: dict[str, int] | None = None, length_caps: dict[str, int] | None = None
) -> Units:
    """All row groups of ``files``. With ``labels`` (user_id -> label), keep only labelled users.
    With ``length_caps`` (modality -> cap), also each sample's event tokens after the caps, the sum
    of min(n_m, cap_m) from the shards' ``n_{m}`` count columns (for length-balanced batches)."""
    shard, rgs, rows, labs, lengths = [], [], [], [], []
    columns = (["user_id"] if labels is not None else []) + [f"n_{m}" for m in length_caps or {}]
    for k, path in enumerate(files):
        pf = open_parquet(path)
        if pf.metadata.num_rows == 0:
            raise DataError(
                path, "empty shard (0 rows); `qanchor build` never writes one, rebuild the data set"
            )
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            try:
                group = pf.read_row_group(g, columns=columns) if columns else None
            except (pa.ArrowInvalid, OSError, KeyError) as err:
                raise DataError(path, f"cannot read columns {columns} of row group {g}: {err}") from None
            if labels is None:
                keep = np.arange(n)
            else:
                ids = group.column("user_id").to_pylist()
                keep = np.array([i for i, u in enumerate(ids) if u in labels], dtype=np.int64)
                labs.append(np.array([labels[ids[i]] for i in keep], dtype=np.int64))
            if length_caps:
                total = np.zeros(n, dtype=np.int64)
                for m, cap in length_caps.items():
                    total += np.minimum(
                        group.column(f"n_{m}").to_numpy(zero_copy_only=False).astype(np.int64), cap
                    )
                lengths.append(total[keep])
            shard.append(k)
            rgs.append(g)
            rows.append(keep)
    return Units(
        files=tuple(str(f) for f in files),
        shard=np.array(shard, dtype=np.int64),
        row_group=np.array(rgs, dtype=np.int64),
        rows=tuple(rows),
        labels=tuple(labs) if labels is not None else None,
        lengths=tuple(lengths) if length_caps else None,
    )


def choose_pair(seed: int, epoch: int, user_id: str, n_pairs: int) -> int:
    """Which of a user's QA pairs this epoch uses: reproducible, independent of batch or rank."""
    return stable_hash64(f"{seed}:{epoch}:{user_id}", "little") % n_pairs


class UserStreamDataset(IterableDataset):
    """Yields collated batches of users (``batch_size=None`` in the DataLoader).

    ``mode="qa"`` (pretraining): one QA pair per user per epoch, query and answer tokenised.
    ``mode="scenario"`` (prompt tuning / evaluation): the scenario's query and the user's label.
    ``mode="users"`` (embedding): the profile only (events, masks, tabular, user ids).

    Every batch carries each kept event's category as a key (``event_category``, see
    :func:`~data_modules.loading.collate.category_key`). With ``future`` (pretraining data built
    with ``--future_events``, qa mode only), it also carries the future window's events
    (``future``: per modality ids, days after the cutoff, category keys, mask): the targets of the
    future-behaviour anchor. An evaluation data set has no such columns.
    """

    def __init__(
        self,
        root: str | Path,
        units: Units,
        *,
        event_modalities: list[str],
        caps: dict[str, int],
        tokenizer: Any,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 1024,
        world_size: int = 1,
        rank: int = 0,
        mode: str = "qa",
        scenario_query: str | None = None,
        max_query_tokens: int = 64,
        max_answer_tokens: int = 128,
        answer_eos: bool = True,
        qa_files: list[str] | None = None,
        qa_keep_templated_uqa: bool = True,
        cutoff: str | None = None,
        future: bool = False,
        future_negatives: int = 0,
        length_window: int = 0,
    ) -> None:
        super().__init__()
        if length_window and units.lengths is None:
            raise ValueError("length_window needs units with lengths (scan_units' length_caps)")
        if mode not in ("qa", "scenario", "users"):
            raise ValueError(f"mode must be 'qa', 'scenario' or 'users', got {mode!r}")
        if mode == "scenario" and (scenario_query is None or units.labels is None):
            raise ValueError("scenario mode needs a scenario_query and labelled units")
        if future and cutoff is None:
            raise ValueError("future events need the data's cutoff (their ages are days after it)")
        self.root = str(root)
        self.units = units
        self.event_modalities = list(event_modalities)
        self.caps = dict(caps)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, buffer_size
        self.length_window = length_window
        self.world_size, self.rank = world_size, rank
        self.mode = mode
        self.scenario_query = scenario_query
        self.max_query_tokens, self.max_answer_tokens = max_query_tokens, max_answer_tokens
        self.answer_eos = answer_eos
        # a generated QA version: files aligned row for row with units.files (see qanchor qa-synth)
        self.qa_files = list(qa_files) if qa_files else None
        self.qa_keep_templated_uqa = qa_keep_templated_uqa
        self.epoch = 0
        self._start_batch = 0  # batches of this epoch already served (set by load_state_dict)
        self._served = 0
        self._vectors: dict[str, np.ndarray] | None = None
        self._query_cache: dict[str, list[int]] = {}  # queries repeat (templates, topics): tokenise once
        self._files: dict[int, pq.ParquetFile] = {}
        # With the cutoff, batches carry each kept event's age in days ("event_age"), for models
        # that read time.
        self.cutoff = cutoff_ms(cutoff) if cutoff else None
        self.future = future and mode == "qa"
        # the dense future anchor: future events' text vectors and log sampling probabilities, and
        # this many random vocabulary entries per modality per batch (the same on every rank)
        self.future_negatives = future_negatives if self.future else 0
        self._log_share: dict[str, np.ndarray] | None = None
        mods = self.event_modalities
        self._columns = ["user_id", *(f"ev_{m}" for m in mods), *(f"cat_{m}" for m in mods), "tabular"]
        if self.cutoff is not None:
            self._columns += [f"ts_{m}" for m in mods]
        if mode == "qa":
            self._columns += ["qa_query", "qa_answer", "qa_source"]
        if self.future:
            self._columns += [f"fut_{p}_{m}" for m in mods for p in ("ev", "ts", "cat")]

    # -- epoch and resume state ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._start_batch, self._served = epoch, 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._start_batch = self._served = int(state["batches"])

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return steps_per_epoch(self.units.num_samples, self.world_size, self.batch_size)

    # -- plan and reading -----------------------------------------------------------------------
    def plan(self, worker: int, num_workers: int, order: np.ndarray | None = None) -> WorkerPlan:
        """The worker's plan; ``order`` (this epoch's unit order) is needed for length balancing."""
        spec = PlanSpec(
            seed=self.seed,
            epoch=self.epoch,
            world_size=self.world_size,
            rank=self.rank,
            num_workers=num_workers,
            worker=worker,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            buffer_size=self.buffer_size,
            length_window=self.length_window,
        )
        lengths = None
        if self.length_window:
            order = (
                unit_order(self.units.shard, self.seed, self.epoch, self.shuffle) if order is None else order
            )
            lengths = np.concatenate([self.units.lengths[u] for u in order])  # by epoch-stream position
        return make_worker_plan(self.units.num_samples, spec, lengths)

    @property
    def vectors(self) -> dict[str, np.ndarray]:
        if self._vectors is None:  # opened lazily in each worker process
            self._vectors = {m: load_vectors(self.root, m) for m in self.event_modalities}
        return self._vectors

    def _read_unit(self, u: int) -> pa.Table:
        k, rg = int(self.units.shard[u]), int(self.units.row_group[u])
        table = self._read_group(k, self.units.files[k], rg, self._columns)
        if self.mode == "qa" and self.qa_files:
            generated = self._read_group(-1 - k, self.qa_files[k], rg, None)
            table = self._with_generated_qa(table, generated, self.qa_files[k])
        return table.take(pa.array(self.units.rows[u]))

    def _read_group(self, key: int, path: str, rg: int, columns: list[str] | None) -> pa.Table:
        if key not in self._files:
            self._files[key] = open_parquet(path)
        try:
            return self._files[key].read_row_group(rg, columns=columns)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(path, f"cannot read row group {rg}: {err}") from None

    def _with_generated_qa(self, table: pa.Table, generated: pa.Table, path: str) -> pa.Table:
        """The shard's pairs (all, or D_future + external only) followed by the generated version's."""
        if generated.column("user_id").to_pylist() != table.column("user_id").to_pylist():
            raise DataError(path, "QA version is not aligned with its shard (rerun qanchor qa-synth)")
        cols = {c: [] for c in ("qa_query", "qa_answer", "qa_source")}
        own = zip(*(table.column(c).to_pylist() for c in cols))
        new = zip(*(generated.column(c).to_pylist() for c in cols))
        for (q, a, s), (gq, ga, gs) in zip(own, new):
            keep = [i for i, src in enumerate(s) if self.qa_keep_templated_uqa or not src.startswith("uqa:")]
            for c, mine, theirs in zip(cols, (q, a, s), (gq, ga, gs)):
                cols[c].append([mine[i] for i in keep] + theirs)
        for c, values in cols.items():
            table = table.set_column(
                table.schema.get_field_index(c), c, pa.array(values, pa.list_(pa.string()))
            )
        return table

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = unit_order(self.units.shard, self.seed, self.epoch, self.shuffle)
        plan = self.plan(worker, num_workers, order)
        sizes = self.units.sizes[order]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        # For every planned sample: which unit (in epoch order) and which row inside it.
        slot = np.searchsorted(starts, plan.positions, side="right") - 1
        offset = plan.positions - starts[slot]
        remaining = np.bincount(slot, minlength=len(order))  # samples of each unit still to serve
        cache: dict[int, pa.Table] = {}
        first = self._start_batch
        for j in range(first):  # resume: account for served batches without reading them
            np.subtract.at(remaining, slot[plan.batch_bounds[j] : plan.batch_bounds[j + 1]], 1)
        for j in range(first, plan.num_batches):
            sl = slice(plan.batch_bounds[j], plan.batch_bounds[j + 1])
            batch = self._collate(slot[sl], offset[sl], order, cache)
            np.subtract.at(remaining, slot[sl], 1)
            for s in np.unique(slot[sl]):
                if remaining[s] == 0:
                    cache.pop(int(s), None)
            self._served = j + 1
            yield batch
        self._start_batch = 0

    def _collate(
        self, slots: np.ndarray, offsets: np.ndarray, order: np.ndarray, cache: dict
    ) -> dict[str, Any]:
        labels = []
        for s in slots.tolist():
            if s not in cache:
                cache[s] = self._read_unit(int(order[s]))
        # Gather rows unit by unit, then restore the batch order.
        uniq = np.unique(slots)
        taken, where = [], []
        for s in uniq.tolist():
            idx = np.flatnonzero(slots == s)
            taken.append(cache[s].take(pa.array(offsets[idx])))
            where.append(idx)
            if self.mode == "scenario":
                labels.append(self.units.labels[int(order[s])][offsets[idx]])
        table = pa.concat_tables(taken)
        perm = np.argsort(np.concatenate(where), kind="stable")
        pieces = table.take(pa.array(perm))
        user_ids = pieces.column("user_id").to_pylist()
        batch: dict[str, Any] = {"user_id": user_ids, "events": {}, "event_mask": {}, "event_category": {}}
        if self.cutoff is not None:
            batch["event_age"] = {}
        if self.future:
            batch["future"] = {m: self._future_events(pieces, m) for m in self.event_modalities}
            if self.future_negatives:
                batch["vocab_sample"] = self._vocab_sample(self._served)
        for m in self.event_modalities:
            ev, mask = pad_events(pieces.column(f"ev_{m}"), self.vectors[m], self.caps[m])
            batch["events"][m] = torch.from_numpy(ev)
            batch["event_mask"][m] = torch.from_numpy(mask)
            batch["event_category"][m] = torch.from_numpy(
                pad_categories(pieces.column(f"cat_{m}"), self.caps[m])
            )
            if self.cutoff is not None:
                ages = pad_event_ages(pieces.column(f"ts_{m}"), self.cutoff, self.caps[m])
                batch["event_age"][m] = torch.from_numpy(ages)
        tab = pieces.column("tabular").combine_chunks()
        width = tab.type.list_size if pa.types.is_fixed_size_list(tab.type) else 0
        batch["tabular"] = torch.from_numpy(
            tab.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(user_ids), width)
        )
        if self.mode == "qa":
            queries, answers, sources = [], [], []
            columns = (pieces.column(c).to_pylist() for c in ("qa_query", "qa_answer", "qa_source"))
            for u, qs, ans, src in zip(user_ids, *columns):
                i = choose_pair(self.seed, self.epoch, u, len(qs))  # one draw picks the whole pair
                queries.append(qs[i])
                answers.append(ans[i])
                sources.append(src[i])
            batch["query"], batch["answer"], batch["qa_source"] = queries, answers, sources
            batch["query_ids"], batch["query_mask"] = self._tokenize_queries(queries)
            ids, cut = self._token_ids(answers, self.max_answer_tokens, eos=self.answer_eos)
            batch["answer_ids"], batch["answer_mask"] = self._padded(ids)
            batch["answer_truncated"] = torch.tensor(
                cut, dtype=torch.bool
            )  # per user: sliceable like the rest
        elif self.mode == "scenario":
            queries = [self.scenario_query] * len(user_ids)
            batch["query"] = queries
            batch["query_ids"], batch["query_mask"] = self._tokenize_queries(queries)
            batch["label"] = torch.from_numpy(np.concatenate(labels)[perm])
        return batch

    def _future_events(self, pieces: pa.Table, m: str) -> dict[str, torch.Tensor]:
        """Modality ``m``'s future-window events: vocabulary ids (-1 unknown), days after the cutoff,
        category keys and the mask, [B, F] each (F: the batch's longest future)."""
        ids, mask = pad_ragged(pieces.column(f"fut_ev_{m}"), -1, np.int64)
        ts, _ = pad_ragged(pieces.column(f"fut_ts_{m}"), 0, np.int64)
        cats = pad_categories(pieces.column(f"fut_cat_{m}"), None)
        age = np.where(mask, (ts - self.cutoff) / 86_400_000.0, 0.0).astype(np.float32)
        out = {"ids": torch.from_numpy(ids), "age": torch.from_numpy(age),
               "category": torch.from_numpy(cats), "mask": torch.from_numpy(mask)}  # fmt: skip
        if self.future_negatives:
            known = np.clip(ids, 0, None)
            out["vectors"] = torch.from_numpy(
                np.asarray(self.vectors[m][known.ravel()]).reshape(*ids.shape, -1)
            )
            out["logq"] = torch.from_numpy(self.log_share[m][known])
        return out

    @property
    def log_share(self) -> dict[str, np.ndarray]:
        """Per modality, log of each vocabulary entry's share of the history events (its logQ)."""
        if self._log_share is None:
            import polars as pl

            self._log_share = {}
            for m in self.event_modalities:
                counts = pl.read_parquet(
                    Path(self.root) / "vocab" / f"{m}.parquet", columns=["id", "count"]
                ).sort("id")
                c = counts["count"].to_numpy().astype(np.float64)
                self._log_share[m] = np.log(c / c.sum()).astype(np.float32)
        return self._log_share

    def _vocab_sample(self, batch_index: int) -> dict[str, dict[str, torch.Tensor]]:
        """``future_negatives`` uniform vocabulary entries per modality, drawn from (seed, epoch,
        batch index) only: every rank and every resume draws the same. Their category is unknown
        (the vocabulary is by text), so they get the "none" category; logQ = log(1 / size)."""
        rng = np.random.default_rng(
            stable_hash64(f"vocab-sample:{self.seed}:{self.epoch}:{batch_index}", "little")
        )
        out = {}
        for m in self.event_modalities:
            size = len(self.vectors[m])
            ids = rng.integers(0, size, self.future_negatives)
            out[m] = {"vectors": torch.from_numpy(np.asarray(self.vectors[m][ids])),
                      "category": torch.zeros(len(ids), dtype=torch.int64),
                      "logq": torch.full((len(ids),), -float(np.log(size)))}  # fmt: skip
        return out

    def _token_ids(self, texts: list[str], max_len: int, *, eos: bool) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut to ``max_len`` (EOS included when asked), and which texts were cut."""
        tok = self.tokenizer
        eos_id = tok.eos_token_id if eos else None
        limit = max_len - (1 if eos_id is not None else 0)
        full = tok(texts, add_special_tokens=False)["input_ids"]
        cut = [len(s) > limit for s in full]
        ids = [s[:limit] for s in full]
        return ([s + [eos_id] for s in ids] if eos_id is not None else ids), cut

    def _padded(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        arr, mask = pad_token_ids(ids, pad_id)
        return torch.from_numpy(arr), torch.from_numpy(mask)

    def _tokenize(self, texts: list[str], max_len: int, *, eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self._padded(self._token_ids(texts, max_len, eos=eos)[0])

    def _tokenize_queries(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._query_cache
        missing = sorted({q for q in queries if q not in cache})
        if missing:
            if len(cache) > 100_000:  # bound memory when every query is unique (external QA)
                cache.clear()
            cache.update(zip(missing, self._token_ids(missing, self.max_query_tokens, eos=False)[0]))
        return self._padded([cache[q] for q in queries])
