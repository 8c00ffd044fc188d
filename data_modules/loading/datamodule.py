"""LightningDataModules over a built UserU data set.

- :class:`UserUDataModule` streams users with one QA pair each, for pretraining.
- :class:`ScenarioDataModule` streams ``(user, scenario query, label)`` for prompt tuning
  (train split) and evaluation (test split).

Both hand Lightning a :class:`UserStreamLoader`, a torchdata ``StatefulDataLoader`` (Lightning
saves a loader's state only if the loader itself is stateful) that also tells the dataset which
epoch it is in, from the trainer, before each pass. For an exact mid-epoch resume the training
step must pull batches from ``dataloader_iter`` (Lightning otherwise prefetches one batch, and the
saved loader state would be one batch ahead). Workers are not persistent: each epoch's workers are
started with the epoch already set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.builder.caps import parse_caps
from data_modules.contract.scenarios import load_scenarios
from data_modules.dataset.manifest import Manifest
from data_modules.dataset.tokenizer import TOKENIZER_DIR, load_tokenizer
from data_modules.encode.dataset import VECTORS_DIR, encoder_info
from data_modules.loading.dataset import Units, UserStreamDataset, scan_units
from data_modules.util.errors import DataError


class UserUDataModule(L.LightningDataModule):
    """Streams UserU shards for pretraining: event vectors + masks per modality, tabular vector,
    one reproducibly chosen QA pair per user, tokenised query and answer.

    Args:
        data: a folder built by ``qanchor build`` and encoded by ``qanchor encode``.
        tokenizer: the backbone's tokenizer (object), or a name/path for :func:`load_tokenizer`;
            ``None`` uses the data set's own trained tokenizer.
        batch_size: users per step per rank.
        max_events: loader-side caps per modality (``"paper"``, ``"bill=64,..."`` or a dict),
            at most the build's caps; ``None`` keeps the build's.
        buffer_size: shuffle buffer (samples) per worker.
        verify: check every shard's and vector file's sha256 against the manifest at setup.
        qa_version: which D_uqa pretraining reads: ``templated`` (the build's), a generated version
            (e.g. ``llm`` from ``qanchor qa-synth``: the build's D_future and external pairs plus the
            generated D_uqa), ``templated+llm`` (both), or ``both`` (= ``templated+llm``).
        future_negatives: for the dense future anchor (``model.future.form: dense``): batches carry
            the future events' text vectors and this many random vocabulary entries per modality
            (0: neither). Only data built with ``--future_events`` has future events.
        length_window: length-balanced batches: each run of this many batches of a worker is
            re-cut from its users sorted by event tokens (after the caps), the batches dealt back in
            a random order (0 = off; see :mod:`~data_modules.loading.plan`, step 5).
    """

    def __init__(
        self,
        data: str = "runs/demo/data",
        tokenizer: Any = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 1024,
        max_events: str | dict[str, int] | None = None,
        max_query_tokens: int = 64,
        max_answer_tokens: int = 128,
        verify: bool = True,
        qa_version: str = "templated",
        future_negatives: int = 0,
        length_window: int = 0,
    ) -> None:
        super().__init__()
        if length_window < 0:
            raise ValueError(f"length_window must be >= 0 (0 = off), got {length_window}")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.data = Path(data)
        self._tokenizer_spec = tokenizer
        self.tokenizer: Any = None
        self.manifest: Manifest | None = None
        self.units: Units | None = None
        self.caps: dict[str, int] = {}
        self.qa_files: list[str] | None = None
        self.qa_keep_templated_uqa = True

    # -- shared helpers -----------------------------------------------------------------------
    def _load_common(self) -> None:
        if self.manifest is not None:
            return
        self.manifest = Manifest.load(self.data)
        encoder_info(self.manifest, self.data)
        shard_names = self.manifest.shard_files
        if not shard_names:
            raise DataError(self.data / "manifest.json", "lists no shards")
        for name in shard_names:
            if self.manifest.files[name]["rows"] == 0:
                raise DataError(
                    self.data / name, "empty shard (0 rows) in the manifest; rebuild the data set"
                )
        vectors = [f"{VECTORS_DIR}/{m}.npy" for m in self.manifest.event_modalities]
        if self.hparams.verify:
            self.manifest.verify(self.data, shard_names + vectors)
        self._resolve_qa_version(self.hparams.qa_version)
        self.caps = self._resolve_caps(self.hparams.max_events)
        spec = self._tokenizer_spec
        self.tokenizer = (
            load_tokenizer(self.data if spec is None else spec)
            if spec is None or isinstance(spec, (str, Path))
            else spec
        )

    def _resolve_qa_version(self, requested: str) -> None:
        from data_modules.supervision.qa_synth import QA_DIR, qa_version_record

        requested = "templated+llm" if requested == "both" else requested
        names = requested.split("+")
        generated = [n for n in names if n != "templated"]
        if len(generated) > 1 or len(names) > 2 or not names:
            raise ValueError(
                f"qa_version {requested!r}: expected templated, a version name, or templated+NAME"
            )
        if not generated:
            return
        qa_version_record(self.manifest, generated[0])
        rel = [f"{QA_DIR}/{generated[0]}/{Path(n).name}" for n in self.manifest.shard_files]
        if self.hparams.verify:
            self.manifest.verify(self.data, rel)
        self.qa_files = [str(self.data / r) for r in rel]
        self.qa_keep_templated_uqa = "templated" in names

    def _resolve_caps(self, requested: str | dict[str, int] | None) -> dict[str, int]:
        built = dict(self.manifest.max_events)
        if requested is None:
            return built
        caps = parse_caps(requested) if isinstance(requested, str) else dict(requested)
        unknown = set(caps) - set(built)
        if unknown:
            raise ValueError(
                f"max_events names unknown modalities {sorted(unknown)}; the data set has {sorted(built)}"
            )
        return {m: min(int(caps.get(m, built[m])), built[m]) for m in built}

    def _shard_paths(self) -> list[str]:
        return [str(self.data / n) for n in self.manifest.shard_files]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _epoch_fn(self) -> Callable[[], int] | None:
        trainer = getattr(self, "trainer", None)
        return (lambda: trainer.current_epoch) if trainer is not None else None

    def _loader(self, dataset: UserStreamDataset) -> UserStreamLoader:
        return UserStreamLoader(dataset, epoch_fn=self._epoch_fn(), num_workers=self.hparams.num_workers)

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._load_common()
        if self.units is None:
            caps = (
                {m: self.caps[m] for m in self.manifest.event_modalities}
                if self.hparams.length_window
                else None
            )
            self.units = scan_units(self._shard_paths(), length_caps=caps)

    def _dataset(
        self,
        units: Units,
        *,
        shuffle: bool,
        world_size: int,
        rank: int,
        scenario_query: str | None = None,
        mode: str | None = None,
    ) -> UserStreamDataset:
        return UserStreamDataset(
            self.data,
            units,
            event_modalities=self.manifest.event_modalities,
            caps=self.caps,
            tokenizer=self.tokenizer,
            batch_size=self.hparams.batch_size,
            seed=self.hparams.seed,
            shuffle=shuffle,
            buffer_size=self.hparams.buffer_size,
            world_size=world_size,
            rank=rank,
            mode=mode or ("qa" if scenario_query is None else "scenario"),
            scenario_query=scenario_query,
            max_query_tokens=self.hparams.max_query_tokens,
            max_answer_tokens=self.hparams.max_answer_tokens,
            qa_files=self.qa_files,
            qa_keep_templated_uqa=self.qa_keep_templated_uqa,
            cutoff=self.manifest.cutoff,
            future=bool(self.manifest.config.get("future_events", False)),
            future_negatives=self.hparams.future_negatives,
            length_window=self.hparams.get("length_window", 0) if units.lengths is not None else 0,
        )

    def make_dataset(self, *, world_size: int = 1, rank: int = 0) -> UserStreamDataset:
        """The pretraining dataset for one rank (also usable without a Trainer)."""
        self.setup()
        return self._dataset(self.units, shuffle=self.hparams.shuffle, world_size=world_size, rank=rank)

    def train_dataloader(self) -> UserStreamLoader:
        world, rank = self._world()
        return self._loader(self.make_dataset(world_size=world, rank=rank))

    def profile_dataset(
        self, *, world_size: int = 1, rank: int = 0, start_batch: int = 0
    ) -> UserStreamDataset:
        """Every user once (this rank's share, in a fixed order), profiles only: for embedding.
        ``start_batch`` skips this rank's first batches without reading them (a resumed job)."""
        self.setup()
        ds = self._dataset(self.units, shuffle=False, world_size=world_size, rank=rank, mode="users")
        ds.load_state_dict({"epoch": 0, "batches": start_batch})
        return ds

    def model_inputs(self) -> dict[str, Any]:
        """What a model must know about this data: modalities in order, vector sizes per modality,
        the tabular width and where the tokenizer the data is tokenised with lives."""
        self.setup()
        spec = self._tokenizer_spec
        if spec is None:
            tokenizer = str(self.data / TOKENIZER_DIR)
        elif isinstance(spec, (str, Path)):
            tokenizer = str(spec)
        else:
            tokenizer = str(getattr(spec, "name_or_path", "") or "")
            if not tokenizer:
                raise ValueError("pass the tokenizer as a name or folder so a model can load the same one")
        return {
            "tokenizer": tokenizer,
            "modalities": tuple(self.manifest.event_modalities),
            "event_dims": self.event_dims,
            "tabular_dim": self.tabular_dim,
            "encoder": str(encoder_info(self.manifest, self.data).get("sha256", "")),
            "categories": {
                m: tuple(self.manifest.categories.get(m, ())) for m in self.manifest.event_modalities
            },
            "log_count_mean": self.log_count_mean(),
        }

    def log_count_mean(self) -> dict[str, float]:
        """Per event modality, mean log(1 + kept events) over the users of the first shard: the
        normaliser (PNA's delta) of count-aware pooling, an estimate from up to one shard of users."""
        import numpy as np
        import pyarrow.parquet as pq

        first = pq.read_table(
            self._shard_paths()[0], columns=[f"ev_{m}" for m in self.manifest.event_modalities]
        )
        out = {}
        for m in self.manifest.event_modalities:
            n = (
                first.column(f"ev_{m}")
                .combine_chunks()
                .value_lengths()
                .fill_null(0)
                .to_numpy(zero_copy_only=False)
            )
            out[m] = round(float(np.log1p(np.minimum(n, self.caps[m])).mean()), 6)
        return out

    @property
    def event_dims(self) -> dict[str, int]:
        self.setup()
        dim = int(encoder_info(self.manifest, self.data)["dim"])
        return {m: dim for m in self.manifest.event_modalities}

    @property
    def tabular_dim(self) -> int:
        self.setup()
        return len(self.manifest.tabular_features)


class ScenarioDataModule(UserUDataModule):
    """``(user, scenario query, label)`` batches for one scenario. The benchmark's train users are
    split once more: ``val_fraction`` of them (by a stable hash of the id) validate, the rest train;
    the test split is read only by test/predict (not shuffled; every user exactly once), so no
    choice (checkpoint, steps) ever sees a test label."""

    def __init__(
        self,
        data: str = "runs/demo/data",
        scenario: str = "Takeout",
        val_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(data=data, **kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.scenario = scenario
        self.val_fraction = val_fraction
        self._split_units: dict[str, Units] = {}
        self.query: str | None = None

    def setup(self, stage: str | None = None) -> None:
        self._load_common()
        if self._split_units:
            return
        scenarios = {s.name: s for s in load_scenarios(self.data / "scenarios.json")}
        if self.scenario not in scenarios:
            raise DataError(
                self.data / "scenarios.json",
                f"no scenario '{self.scenario}'",
                expected=f"one of {sorted(scenarios)}",
            )
        self.query = scenarios[self.scenario].query
        path = self.data / "benchmarks" / f"{self.scenario}.parquet"
        bench = pl.read_parquet(path)
        from data_modules.dataset.splits import in_validation

        seed = self.hparams.seed
        in_val = pl.col("user_id").map_elements(
            lambda u: in_validation(u, seed, self.val_fraction), return_dtype=pl.Boolean
        )
        train = bench.filter(pl.col("split") == "train").with_columns(in_val.alias("val"))
        parts = {
            "train": train.filter(~pl.col("val")),
            "val": train.filter(pl.col("val")),
            "test": bench.filter(pl.col("split") == "test"),
        }
        for split, part in parts.items():
            labels = dict(zip(part["user_id"].to_list(), part["label"].to_list()))
            if not labels:
                raise DataError(path, f"no users in the '{split}' split (val_fraction {self.val_fraction})")
            self._split_units[split] = scan_units(self._shard_paths(), labels)

    def split_dataset(
        self, split: str, *, shuffle: bool, world_size: int = 1, rank: int = 0
    ) -> UserStreamDataset:
        self.setup()
        return self._dataset(
            self._split_units[split],
            shuffle=shuffle,
            world_size=world_size,
            rank=rank,
            scenario_query=self.query,
        )

    def train_dataloader(self) -> UserStreamLoader:
        world, rank = self._world()
        return self._loader(
            self.split_dataset("train", shuffle=self.hparams.shuffle, world_size=world, rank=rank)
        )

    def _eval_loader(self, split: str) -> UserStreamLoader:
        world, rank = self._world()
        return UserStreamLoader(
            self.split_dataset(split, shuffle=False, world_size=world, rank=rank),
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> UserStreamLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> UserStreamLoader:
        return self._eval_loader("test")

    predict_dataloader = test_dataloader


class UserStreamLoader(StatefulDataLoader):
    """A StatefulDataLoader over a :class:`UserStreamDataset` that sets the dataset's epoch before
    each pass: from :meth:`set_epoch`, or, for training, from ``epoch_fn`` (the trainer's epoch).

    With ``epoch_fn`` the loader's own checkpointed state, not the trainer's counter, says which
    epoch a pass reads: a restored pass goes on in its epoch, a restored *finished* pass (saved
    after an epoch's last batch) is followed by the next epoch from its start, and afterwards each
    change of the trainer's epoch starts the next epoch. Lightning's counter is not exact across
    such resumes: it is read before Lightning restores it, and a checkpoint saved at or near an
    epoch's end can move it by two (an empty epoch), which shuffled the resumed run's next epoch
    differently from the uninterrupted run's (seen in CI).
    """

    EPOCH_KEY = "_user_stream_epoch"  # the pass's epoch, whatever the number of workers

    def __init__(
        self, dataset: UserStreamDataset, *, epoch_fn: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("persistent_workers", False)
        if kwargs["persistent_workers"]:
            raise ValueError(
                "persistent workers would keep a stale epoch; UserStreamLoader starts workers per epoch"
            )
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn
        self._restored_epoch: int | None = None  # the epoch the next pass reads, from a checkpoint
        self._last_counter: int | None = None  # epoch_fn() at the previous pass
        self._restored_epoch_unknown = False

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), self.EPOCH_KEY: self.dataset.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        epoch = state.pop(self.EPOCH_KEY, None)
        if epoch is None:  # saved before the key existed: the one-process state names the epoch
            epoch = (state.get("dataset_state") or {}).get("epoch")
        # A checkpoint from before the key with loader workers does not say the epoch: the trainer's
        # counter names every pass then, as it did when that checkpoint was written.
        self._restored_epoch_unknown = epoch is None and bool(state)
        self._last_counter = None
        self._restored_epoch = None if epoch is None else int(epoch)
        if epoch is not None and int(state.get("_num_yielded", 0)) >= len(self):
            self._restored_epoch = int(epoch) + 1  # the saved pass is over: the next one, afresh
            state = {}
        super().load_state_dict(state)

    def __iter__(self):
        if self._epoch_fn is not None:
            counter = self._epoch_fn()
            if self._restored_epoch is not None:
                epoch, self._restored_epoch = self._restored_epoch, None
            elif self._last_counter is None or self._restored_epoch_unknown:
                epoch = counter
            else:
                epoch = self.dataset.epoch + (counter != self._last_counter)
            self._last_counter = counter
            self.dataset.set_epoch(epoch)
        return super().__iter__()
