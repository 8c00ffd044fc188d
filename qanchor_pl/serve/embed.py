"""``qanchor embed``: every user's embedding for every chosen scenario, written as parquet parts.

Per batch of users the prefix runs ONCE; each scenario's suffix (soft prompt if tuned, query,
``<USER_EMB>``) then runs on its KV cache (``--no-kv-cache``: the full sequence per scenario, for
comparison). Lightning's predict loop drives it, so ``--devices N`` runs N processes (DDP), each
writing its own part set. Parts are written atomically every ``part_batches`` batches; a re-run of
the same job skips the finished parts of each rank and ends with every (user, scenario) once.

Output folder: ``job.json`` (what was asked; a re-run must match), ``parts/part-rRRR-NNNNNN.parquet``
(``user_id``, ``scenario``, ``embedding`` list<float32>[E]) and, when all ranks are done,
``manifest.json`` (parts, rows per part, users, scenarios).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from data_modules.contract.scenarios import load_scenarios
from data_modules.loading.datamodule import UserUDataModule
from data_modules.util.atomic import write_json, write_parquet
from qanchor_pl.config import EmbedConfig
from qanchor_pl.model.kv_cache import anchor_from_prefix, encode_prefix
from qanchor_pl.model.load import check_model_fits_data, load_model
from qanchor_pl.model.qanchor import QAnchorModel
from qanchor_pl.train.tune import load_prompt

PART = re.compile(r"part-r(\d{3})-(\d{6})\.parquet$")


def part_name(rank: int, index: int) -> str:
    return f"part-r{rank:03d}-{index:06d}.parquet"


def finished_parts(out: Path, rank: int) -> int:
    """How many consecutive parts 0..k-1 of ``rank`` exist (each is complete: written atomically)."""
    have = {
        int(m.group(2))
        for p in (out / "parts").glob("*.parquet")
        if (m := PART.search(p.name)) and int(m.group(1)) == rank
    }
    k = 0
    while k in have:
        k += 1
    return k


class ScenarioQuery:
    """One scenario's suffix: its query token ids and, if tuned, its soft prompt."""

    def __init__(self, name: str, query: str, ids: list[int], prompt: torch.Tensor | None) -> None:
        self.name, self.query, self.ids, self.prompt = name, query, ids, prompt


def scenario_queries(
    model: QAnchorModel, data: Path, names: str, prompts: str | None, max_tokens: int = 64
) -> list[ScenarioQuery]:
    """Resolve ``names`` ("all" or "a,b") against the data set, with tuned prompts from ``prompts``."""
    known = {s.name: s.query for s in load_scenarios(data / "scenarios.json")}
    chosen = list(known) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; {data / 'scenarios.json'} has {sorted(known)}")
    if not chosen:
        raise ValueError(f"--scenarios names no scenario; {data / 'scenarios.json'} has {sorted(known)}")
    out = []
    for name in chosen:
        query, prompt = known[name], None
        if prompts is not None:
            folder = Path(prompts) / name / "prompt"
            if not folder.exists():
                raise FileNotFoundError(
                    f"no tuned prompt for scenario '{name}' under {prompts} (expected {folder})"
                )
            meta, prompt, _ = load_prompt(folder)
            query = meta["query"]  # the query the prompt was tuned with
        ids = model.tokenizer([query], add_special_tokens=False, truncation=True, max_length=max_tokens)[
            "input_ids"
        ][0]
        out.append(ScenarioQuery(name, query, ids, prompt))
    return out


class EmbedModule(L.LightningModule):
    """predict_step: a batch of user profiles -> their embeddings for every scenario."""

    def __init__(self, model: QAnchorModel, scenarios: list[ScenarioQuery], kv_cache: bool = True) -> None:
        super().__init__()
        self.model = model.eval()
        self.scenarios = scenarios
        self.kv_cache = kv_cache

    def _query(self, s: ScenarioQuery, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(s.ids, dtype=torch.long, device=self.device).expand(batch_size, -1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    @torch.no_grad()
    def embed_batch(self, batch: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        b = len(batch["user_id"])
        out = []
        prefix = encode_prefix(self.model, batch) if self.kv_cache else None
        for s in self.scenarios:
            ids, mask = self._query(s, b)
            prompt = s.prompt.to(self.device) if s.prompt is not None else None
            if prefix is not None:
                u = anchor_from_prefix(self.model, prefix, ids, mask, prompt)
            else:
                u = self.model.anchor({**batch, "query_ids": ids, "query_mask": mask}, prompt=prompt)
            out.append((s.name, u))
        return out

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> pa.Table:
        users = list(batch["user_id"])
        tables = []
        for name, u in self.embed_batch(batch):
            emb = u.float().cpu().numpy().astype(np.float32)
            tables.append(
                pa.table(
                    {
                        "user_id": pa.array(users, pa.string()),
                        "scenario": pa.array([name] * len(users), pa.string()),
                        "embedding": pa.FixedSizeListArray.from_arrays(
                            pa.array(emb.reshape(-1)), emb.shape[1]
                        ),
                    }
                )
            )
        return pa.concat_tables(tables)


class PartWriter(BasePredictionWriter):
    """Collects predict_step tables and writes one part per ``part_batches`` batches, per rank."""

    def __init__(self, out: Path, part_batches: int) -> None:
        super().__init__(write_interval="batch")
        self.out, self.part_batches = out, part_batches
        self.first_part = self.next_part = 0
        self.pending: list[pa.Table] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        # a re-run continues after this rank's finished parts (the loader skips their batches)
        self.first_part = self.next_part = finished_parts(self.out, trainer.global_rank)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        self.pending.append(prediction)
        if len(self.pending) >= self.part_batches:
            self._flush(trainer.global_rank)

    def _flush(self, rank: int) -> None:
        if not self.pending:
            return
        write_parquet(self.out / "parts" / part_name(rank, self.next_part), pa.concat_tables(self.pending))
        self.pending, self.next_part = [], self.next_part + 1

    def on_predict_end(self, trainer, pl_module) -> None:
        self._flush(trainer.global_rank)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            write_manifest(self.out)


def write_manifest(out: Path) -> dict:
    """``manifest.json`` of a finished job: every part with its rows, bytes and sha256 (readers
    verify them), written last."""
    import pyarrow.parquet as pq

    from data_modules.dataset.manifest import file_entry

    parts = sorted((out / "parts").glob("part-*.parquet"))
    entries = {p.name: file_entry(out / "parts", p.name, pq.ParquetFile(p).metadata.num_rows) for p in parts}
    job = json.loads((out / "job.json").read_text())
    manifest = {"job": job, "parts": entries, "rows": sum(e["rows"] for e in entries.values())}
    write_json(out / "manifest.json", manifest)
    return manifest


def read_embeddings(out: Path) -> pa.Table:
    """The (user_id, scenario, embedding) rows of a finished job, each part checked against the
    manifest (size and sha256) and each (user, scenario) once: a corrupt or mixed folder is refused."""
    import pyarrow.parquet as pq

    from data_modules.dataset.manifest import verify_file
    from data_modules.util.atomic import read_json
    from data_modules.util.errors import DataError

    manifest = read_json(out / "manifest.json", missing="no manifest.json: is the embedding job finished?")
    parts = manifest.get("parts")
    if not isinstance(parts, dict) or not all(isinstance(e, dict) for e in parts.values()):
        raise DataError(
            out / "manifest.json",
            "parts without checksums",
            expected="a manifest from this version (re-run qanchor embed)",
        )
    for name, entry in sorted(parts.items()):
        verify_file(out / "parts" / name, entry)
    if not parts:
        raise DataError(out / "manifest.json", "lists no parts (no users were embedded)")
    table = pa.concat_tables([pq.read_table(out / "parts" / n) for n in sorted(parts)])
    keys = pa.table({"u": table.column("user_id"), "s": table.column("scenario")})
    if keys.group_by(["u", "s"]).aggregate([]).num_rows != table.num_rows:
        raise DataError(out / "parts", "a (user, scenario) pair appears twice: parts of two jobs are mixed")
    return table


class EmbedDataModule(L.LightningDataModule):
    """Each rank's users in a fixed order, starting after the batches its finished parts cover."""

    def __init__(self, data: UserUDataModule, out: Path, part_batches: int) -> None:
        super().__init__()
        self.data, self.out, self.part_batches = data, out, part_batches

    def predict_dataloader(self):
        from data_modules.loading.datamodule import UserStreamLoader

        world, rank = self.trainer.world_size, self.trainer.global_rank
        start = finished_parts(self.out, rank) * self.part_batches
        ds = self.data.profile_dataset(world_size=world, rank=rank, start_batch=start)
        return UserStreamLoader(ds, num_workers=self.data.hparams.num_workers)


def run_embed(cfg: EmbedConfig) -> dict:
    """``qanchor embed``: every user x scenario embedding into resumable parts under ``cfg.out``
    (one job at a time per folder: rank 0 holds ``OUT/.lock``)."""
    from data_modules.util.lock import FolderLock, is_rank_zero

    out_dir = Path(cfg.out)
    if not is_rank_zero():
        return _run_embed(cfg)
    with FolderLock(out_dir / ".lock", f"embedding folder {out_dir}"):
        return _run_embed(cfg)


def _run_embed(cfg: EmbedConfig) -> dict:
    model, data, scenarios, out, prompts = cfg.model, cfg.data, cfg.scenarios, cfg.out, cfg.prompts
    kv_cache, batch_size, part_batches, devices = cfg.kv_cache, cfg.batch_size, cfg.part_batches, cfg.devices
    num_nodes = cfg.num_nodes
    accelerator, num_workers = cfg.accelerator, cfg.num_workers
    out_dir = Path(out)
    qmodel = load_model(model)
    queries = scenario_queries(qmodel, Path(data), scenarios, prompts)
    job = {
        "model": str(model), "data": str(data), "scenarios": [q.name for q in queries],
        "queries": {q.name: q.query for q in queries}, "prompts": prompts, "batch_size": batch_size,
        "part_batches": part_batches, "world_size": devices * num_nodes, "kv_cache": kv_cache,
        "embed_dim": qmodel.embedding_dim,
    }  # fmt: skip
    job_path = out_dir / "job.json"
    if job_path.exists():
        previous = json.loads(job_path.read_text())
        if previous != job:
            diff = sorted(k for k in job if previous.get(k) != job[k])
            raise ValueError(
                f"{out_dir} holds a different embedding job (differs in {diff}); use another --out"
            )
    else:  # DDP ranks re-run this command after rank 0 has written it, and find it equal
        write_json(job_path, job)
    tokenizer = str(Path(model) / "tokenizer") if Path(model).is_dir() else qmodel.config.inputs.tokenizer
    users = UserUDataModule(data, tokenizer=tokenizer, batch_size=batch_size, num_workers=num_workers)
    check_model_fits_data(qmodel, users.model_inputs(), data)
    writer = PartWriter(out_dir, part_batches)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto",
        logger=False,
        enable_progress_bar=True,
        enable_model_summary=False,
        callbacks=[writer],
    )
    trainer.predict(
        EmbedModule(qmodel, queries, kv_cache),
        datamodule=EmbedDataModule(users, out_dir, part_batches),
        return_predictions=False,
    )
    if not trainer.is_global_zero:
        return {}
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return {"out": str(out_dir), "parts": len(manifest["parts"]), "rows": manifest["rows"],
            "rank0_resumed_at_part": writer.first_part, "kv_cache": kv_cache}  # fmt: skip
