"""``qanchor qa-synth``: the paper's LLM-written D_uqa (3.1.2) for a built data set.

For each user: the top topics (the build's relevance ranking, as recorded in the shard's templated
sources), a prompt holding the user's seen events that match the topic and the topic's question,
batched generation (left padding), then reflection: an answer is kept only if every number, quoted
title and known category it states occurs in the events it was shown, and it states at least one
of them (optionally a second LLM judge must say "yes"). Rejections are counted by reason and never
written.

Work is cut into fixed chunks of users (``chunk_users``, in the data set's shard order); rank r of
W takes chunks c with c % W == r. Each chunk is seeded by its index and written atomically as one
part, so a rerun skips finished chunks, any world size gives the same parts, and the merged result
equals a one-rank run. Rank 0 merges once every chunk is there: ``DATA/qa/<version>/shard-*.parquet``
aligned row for row (and row group for row group) with the shards, recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.contract.modalities import meta_from_json
from data_modules.contract.names import check_name
from data_modules.contract.topics import Topic, load_topics
from data_modules.dataset.manifest import Manifest, file_entry
from data_modules.supervision import templated as qa
from data_modules.util.atomic import write_json, write_parquet
from data_modules.util.errors import DataError
from data_modules.util.hashing import sha256_folder
from data_modules.util.vector_math import settle_vector_math_dispatch

log = logging.getLogger(__name__)
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SYSTEM = (
    "You describe one user's behaviour for a question, using only the activity log given. "
    "Quote event texts exactly, in double quotes. State only numbers that appear in the log. "
    "Answer in two or three sentences."
)
QA_DIR = "qa"
PART_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("query", pa.string()), ("answer", pa.string()), ("source", pa.string())]
)


@dataclass
class QASynthConfig:
    """Everything ``qanchor qa-synth`` can be told; recorded in the manifest with the result."""

    data: str = "data"
    """a built data set"""
    model: str = DEFAULT_MODEL
    """a causal LM: a local folder or a cached hub id"""
    version: str = "llm"
    """the QA version's name (data/qa/<version>/)"""
    topics_per_user: int = 10
    """topics asked per user"""
    prompt_events: int = 20
    """most recent matching events shown per (user, topic)"""
    batch_size: int = 16
    """prompts per generate() call"""
    chunk_users: int = 32
    """users per resumable chunk (ranks share the chunks)"""
    max_new_tokens: int = 96
    """answer length cap"""
    temperature: float = 0.7
    """sampling temperature; 0 = greedy"""
    top_p: float = 0.9
    """nucleus sampling"""
    seed: int = 0
    """sampling seed"""
    device: str = "auto"
    """cpu | cuda | auto"""
    dtype: str = "auto"
    """auto: bfloat16 on CUDA, float32 on CPU"""
    judge: str | None = None
    """a second causal LM answering yes/no on each kept answer"""
    limit_users: int | None = None
    """only the first N users (smoke runs, the benchmark)"""


@dataclass
class Prompt:
    """One (user, topic) request and what its answer may state."""

    user_id: str
    topic: Topic
    log_text: str
    facts: qa.Facts
    user_categories: set[str] = field(default_factory=set)


# -- inputs --------------------------------------------------------------------------------------
def model_folder(model: str) -> Path:
    """A local folder holding the model: the path itself, or the local Hugging Face cache's copy."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise DataError(f"--model {path}", "no config.json: not a Hugging Face model folder")
        return path
    if path.exists() or model.startswith((".", "/")) or model.count("/") != 1:
        raise DataError(
            f"--model {model}", "model path not found", expected="a local model folder or a cached hub id"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 (any failure means: not available offline)
        raise DataError(
            f"--model {model}", "model not found locally (no network here: download it first and pass its folder)",
            expected="a local model folder or a cached hub id",
        ) from None  # fmt: skip


def vocab_texts(root: Path, modalities: Sequence[str]) -> dict[str, list[str]]:
    return {
        m: pq.read_table(root / "vocab" / f"{m}.parquet", columns=["text"]).column("text").to_pylist()
        for m in modalities
    }


def iter_users(root: Path, manifest: Manifest) -> Iterator[dict[str, Any]]:
    """Every user's shard row (seen events, QA sources), in shard order, with (shard, row) added."""
    cols = ["user_id", "qa_source"]
    for m in manifest.event_modalities:
        cols += [f"ev_{m}", f"ts_{m}", f"val_{m}", f"cat_{m}"]
    for k, name in enumerate(manifest.shard_files):
        table = pq.read_table(root / name, columns=cols)
        for i, row in enumerate(table.to_pylist()):
            yield {**row, "_shard": k, "_row": i}


def user_chunks(root: Path, manifest: Manifest, size: int, n_users: int) -> Iterator[tuple[int, list[dict]]]:
    """(chunk index, its users' rows) for the first ``n_users`` users, one shard in memory at a time."""
    chunk: list[dict] = []
    for i, row in enumerate(iter_users(root, manifest)):
        if i == n_users:
            break
        chunk.append(row)
        if len(chunk) == size:
            yield i // size, chunk
            chunk = []
    if chunk:
        yield (n_users - 1) // size, chunk


def known_categories(root: Path, manifest: Manifest) -> set[str]:
    """Every category of every seen event: the names an answer could claim."""
    import pyarrow.compute as pc

    out: set[str] = set()
    for name in manifest.shard_files:
        table = pq.read_table(root / name, columns=[f"cat_{m}" for m in manifest.event_modalities])
        for col in table.columns:
            out |= {c for c in pc.unique(pc.list_flatten(col)).to_pylist() if c}
    return out


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def build_prompts(
    row: dict, topics: dict[str, Topic], vocab: dict[str, list[str]], manifest: Manifest, cfg: QASynthConfig
) -> list[Prompt]:
    """The user's top topics (the build's order), each with the matching seen events as a log."""
    import datetime as dt

    meta = meta_from_json(manifest.modality_meta)
    cutoff = dt.datetime.fromisoformat(manifest.cutoff)
    events = []  # (ts, modality, text, category, value)
    for m in manifest.event_modalities:
        for vid, ts, val, cat in zip(row[f"ev_{m}"], row[f"ts_{m}"], row[f"val_{m}"], row[f"cat_{m}"]):
            events.append((ts, m, vocab[m][vid], cat, val))
    user_categories = {e[3] for e in events if e[3]}
    names = [s.removeprefix("uqa:") for s in row["qa_source"] if s.startswith("uqa:")]
    prompts = []
    for name in names[: cfg.topics_per_user]:
        tp = topics.get(name)
        if tp is None:
            continue
        hits = [e for e in events if tp.matches(e[1], e[3] or "", e[2])][-cfg.prompt_events :]
        lines, facts = [], qa.Facts()
        for ts, m, text, cat, val in hits:
            days = (cutoff - ts).days
            parts = [f'[{meta[m].label if m in meta else m}] {days} days before the cutoff: "{text}"']
            if cat:
                parts.append(f"category {cat}")
            if val is not None:
                parts.append(f"value {meta[m].with_unit(_number(val)) if m in meta else _number(val)}")
            lines.append(", ".join(parts))
            facts.spans.add(text)
            facts.add_numbers([days, *([_number(val)] if val is not None else [])])
            facts.add_numbers(qa.stated_numbers(text))  # digits inside event texts are facts too
        facts.add_numbers([len(hits)])
        log_text = "\n".join(lines) if lines else "(no matching events)"
        prompts.append(
            Prompt(row["user_id"], tp, f"{len(hits)} events on record.\n{log_text}", facts, user_categories)
        )
    return prompts


# -- reflection ----------------------------------------------------------------------------------
def reflect_generated(answer: str, prompt: Prompt, known_categories: set[str]) -> str | None:
    """Why a generated answer is rejected, or None when every claim is grounded in the prompt's log."""
    if not re.search(r"[^\W_]", answer):
        return "empty"
    if re.search(r"[\ufffd\x00-\x08\x0b-\x1f\x7f]", answer):
        return "garbled"  # broken bytes or control characters: noise, whatever it happens to contain
    masked, quotes = qa.mask_quotes(answer, prompt.facts.spans, partial=True)
    if qa.QUOTED_SPAN.search(masked):
        return "ungrounded_title"
    numbers = qa.stated_numbers(masked)
    if any(qa.number_key(n) not in prompt.facts.numbers for n in numbers):
        return "unsupported_number"
    lowered = masked.lower()
    mentioned = {
        c for c in known_categories if re.search(rf"(?<![^\W_]){re.escape(c.lower())}(?![^\W_])", lowered)
    }
    if mentioned - prompt.user_categories:
        return "ungrounded_category"
    if not (quotes or numbers or mentioned):
        return "uninformative"  # states nothing checkable: not evidence about this user
    return None


# -- generation ----------------------------------------------------------------------------------
class Generator:
    """A causal LM with its tokenizer, generating answers for batches of prompts."""

    def __init__(self, folder: Path, cfg: QASynthConfig, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from data_modules.dataset.tokenizer import load_tokenizer

        settle_vector_math_dispatch()  # before the first parallel cos/sin: the same answers every run
        self.cfg, self.device = cfg, device
        dtype = (
            (torch.bfloat16 if device.startswith("cuda") else torch.float32)
            if cfg.dtype == "auto"
            else getattr(torch, cfg.dtype)
        )
        try:
            self.tok = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError):
            self.tok = load_tokenizer(folder)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()

    def render(self, system: str, user: str) -> str:
        if getattr(self.tok, "chat_template", None):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\nAnswer:"

    def generate(self, texts: list[str], seed: int) -> tuple[list[str], int]:
        """Answers for ``texts`` and the number of generated tokens; sampling seeded by ``seed``."""
        import torch

        batch = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(seed)
        sample = self.cfg.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.cfg.max_new_tokens,
                use_cache=True,  # a saved config may say otherwise (training turns it off)
                do_sample=sample,
                temperature=self.cfg.temperature if sample else None,
                top_p=self.cfg.top_p if sample else None,
                top_k=None,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        n_tokens = int((new != self.tok.pad_token_id).sum())
        return [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)], n_tokens

    def judge_yes(self, texts: list[str]) -> list[bool]:
        """One forward pass: does the model put more mass on " yes" than on " no" next?"""
        import torch

        yes, no = (self.tok.encode(w, add_special_tokens=False)[0] for w in (" yes", " no"))
        batch = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, -1]
        return (logits[:, yes] > logits[:, no]).tolist()


def _question(prompt: Prompt) -> str:
    return f"Activity log ({prompt.log_text})\n\nQuestion: {prompt.topic.question}"


def synth_chunk(
    prompts: list[Prompt],
    gen: Generator,
    judge: Generator | None,
    known: set[str],
    cfg: QASynthConfig,
    chunk: int,
) -> tuple[list[dict], Counter, int]:
    """Generate, reflect and (optionally) judge one chunk's prompts; returns (kept rows, counts, tokens)."""
    rows, counts, tokens = [], Counter(), 0
    for b in range(0, len(prompts), cfg.batch_size):
        group = prompts[b : b + cfg.batch_size]
        answers, n = gen.generate(
            [gen.render(SYSTEM, _question(p)) for p in group], seed=cfg.seed * 1_000_003 + chunk * 1_009 + b
        )
        tokens += n
        kept = []
        for p, a in zip(group, answers):
            reason = reflect_generated(a, p, known)
            if reason:
                counts[f"rejected_{reason}"] += 1
            else:
                kept.append((p, a))
        if judge is not None and kept:
            verdicts = judge.judge_yes(
                [
                    judge.render(
                        "Answer yes or no.",
                        f"{_question(p)}\nProposed answer: {a}\nIs the answer supported by the log?",
                    )
                    for p, a in kept
                ]
            )
            counts["rejected_judge"] += sum(not v for v in verdicts)
            kept = [pa for pa, v in zip(kept, verdicts) if v]
        counts["kept"] += len(kept)
        rows += [
            {"user_id": p.user_id, "query": p.topic.question, "answer": a, "source": f"llm:{p.topic.name}"}
            for p, a in kept
        ]
    return rows, counts, tokens


# -- the job -------------------------------------------------------------------------------------
def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun or SLURM (srun), else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_STEP_ID") is not None:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def resolve_device(cfg: QASynthConfig, local_rank: int) -> str:
    import torch

    if cfg.device != "auto":
        return cfg.device
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def _job_identity(cfg: QASynthConfig, digest: str, judge_digest: str | None, manifest: Manifest) -> dict:
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("data", "device")}
    return {"settings": settings, "model_sha256": digest, "judge_sha256": judge_digest, "data_cutoff": manifest.cutoff,
            "shards": {n: manifest.files[n]["sha256"] for n in manifest.shard_files}}  # fmt: skip


def run_qa_synth(cfg: QASynthConfig) -> dict:
    """Run this process's share of the job; rank 0 merges and records the version when all is done."""
    check_name(cfg.version, "--version")
    if cfg.version in ("templated", "both"):
        raise DataError("--version", f"'{cfg.version}' is reserved", expected="another name, e.g. llm")
    root = Path(cfg.data)
    manifest = Manifest.load(root)
    folder = model_folder(cfg.model)
    judge_folder = model_folder(cfg.judge) if cfg.judge else None
    rank, size, local = world()
    parts = root / QA_DIR / f".parts-{cfg.version}"
    identity = _job_identity(
        cfg, sha256_folder(folder), sha256_folder(judge_folder) if judge_folder else None, manifest
    )
    _claim_job(parts, identity, rank)

    topics = {t.name: t for t in load_topics(root / "topics.json", manifest.event_modalities)}
    vocab = vocab_texts(root, manifest.event_modalities)
    known = known_categories(root, manifest)
    n_users = (
        manifest.counts["users"]
        if cfg.limit_users is None
        else min(cfg.limit_users, manifest.counts["users"])
    )
    n_chunks = -(-n_users // cfg.chunk_users)
    mine = {
        c for c in range(n_chunks) if c % size == rank and not (parts / f"chunk-{c:06d}.parquet").exists()
    }
    device = resolve_device(cfg, local)
    t0, tokens, done = time.perf_counter(), 0, 0
    if mine:
        gen = Generator(folder, cfg, device)
        judge = Generator(judge_folder, cfg, device) if judge_folder else None
        for c, chunk_users in user_chunks(root, manifest, cfg.chunk_users, n_users):
            if c not in mine:
                continue
            prompts = [p for u in chunk_users for p in build_prompts(u, topics, vocab, manifest, cfg)]
            rows, counts, n = synth_chunk(prompts, gen, judge, known, cfg, c)
            counts["prompts"] += len(prompts)
            counts["users"] += len(chunk_users)
            tokens += n
            done += len(chunk_users)
            table = pa.Table.from_pylist(rows, schema=PART_SCHEMA).replace_schema_metadata(
                {"counts": json.dumps(dict(counts)), "generated_tokens": str(n)}
            )
            write_parquet(parts / f"chunk-{c:06d}.parquet", table)
    elapsed = time.perf_counter() - t0
    _barrier(size)
    result = {"rank": rank, "world_size": size, "chunks_done_here": len(mine), "users_done_here": done,
              "generated_tokens_here": tokens, "seconds_here": round(elapsed, 2)}  # fmt: skip
    if rank == 0:
        result.update(merge_version(root, manifest, cfg, identity, n_chunks))
    return result


def _claim_job(parts: Path, identity: dict, rank: int) -> None:
    """Refuse to mix two different jobs' parts in one folder; rank 0 records the job first."""
    job = parts / "job.json"
    if job.exists():
        if json.loads(job.read_text()) != identity:
            raise DataError(job, "parts of a different qa-synth job (other model, settings or data) are here",
                            expected="the same settings, another --version, or delete the folder")  # fmt: skip
        return
    if rank == 0:
        write_json(job, identity)


def _barrier(size: int) -> None:
    if size == 1:
        return
    import datetime as dt

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=dt.timedelta(hours=6))
    dist.barrier()


def merge_version(root: Path, manifest: Manifest, cfg: QASynthConfig, identity: dict, n_chunks: int) -> dict:
    """Shard-aligned QA files from the chunk parts, then the manifest's record of the version."""
    parts = root / QA_DIR / f".parts-{cfg.version}"
    missing = [c for c in range(n_chunks) if not (parts / f"chunk-{c:06d}.parquet").exists()]
    if missing:
        raise DataError(parts, f"{len(missing)} chunks missing (e.g. {missing[:3]}): rerun to finish them")
    counts, tokens = Counter(), 0
    for c in range(n_chunks):  # the counts travel in each part's metadata
        meta = pq.read_schema(parts / f"chunk-{c:06d}.parquet").metadata or {}
        counts.update(json.loads(meta[b"counts"]))
        tokens += int(meta[b"generated_tokens"])
    # Chunks hold users in shard order, so one pass streams them into the shard-aligned files.
    rows = _ordered_rows(parts, n_chunks)
    pending = next(rows, None)
    out = root / QA_DIR / cfg.version
    row_group = int(manifest.config.get("row_group_size", 256))
    files, with_answers = {}, 0
    for name in manifest.shard_files:
        ids = pq.read_table(root / name, columns=["user_id"]).column("user_id").to_pylist()
        per_user = []
        for u in ids:
            mine = []
            while pending is not None and pending["user_id"] == u:
                mine.append(pending)
                pending = next(rows, None)
            per_user.append(mine)
            with_answers += bool(mine)
        table = pa.table({
            "user_id": pa.array(ids, pa.string()),
            "qa_query": pa.array([[r["query"] for r in rs] for rs in per_user], pa.list_(pa.string())),
            "qa_answer": pa.array([[r["answer"] for r in rs] for rs in per_user], pa.list_(pa.string())),
            "qa_source": pa.array([[r["source"] for r in rs] for rs in per_user], pa.list_(pa.string())),
        })  # fmt: skip
        rel = f"{QA_DIR}/{cfg.version}/{Path(name).name}"
        write_parquet(out / Path(name).name, table, row_group_size=row_group)
        files[rel] = file_entry(root, rel, table.num_rows)
    if pending is not None:
        raise DataError(
            parts, f"answer for user '{pending['user_id']}' out of shard order (parts of another data set?)"
        )
    record = {
        "generator": "qanchor qa-synth",
        "model": cfg.model,
        "model_sha256": identity["model_sha256"],
        "judge": cfg.judge,
        "judge_sha256": identity["judge_sha256"],
        "settings": identity["settings"],
        "counts": {
            **dict(sorted(counts.items())),
            "users_with_answers": with_answers,
            "generated_tokens": tokens,
        },
    }
    fresh = Manifest.load(root)  # re-read: never overwrite another writer's newer record
    fresh.files = {
        k: v for k, v in fresh.files.items() if not k.startswith(f"{QA_DIR}/{cfg.version}/")
    } | files
    fresh.qa.setdefault("versions", {})[cfg.version] = record
    fresh.save(root)
    return {"version": cfg.version, "out": str(out), **record["counts"]}


def _ordered_rows(parts: Path, n_chunks: int) -> Iterator[dict]:
    for c in range(n_chunks):
        yield from pq.read_table(parts / f"chunk-{c:06d}.parquet").to_pylist()


def qa_version_record(manifest: Manifest, version: str) -> dict:
    """The manifest's record of a generated QA version, or a DataError listing the known ones."""
    versions = manifest.qa.get("versions", {})
    if version not in versions:
        raise DataError("manifest.json", f"no QA version '{version}'",
                        expected=f"templated, both, or one of {sorted(versions)} (run qanchor qa-synth)")  # fmt: skip
    return versions[version]
