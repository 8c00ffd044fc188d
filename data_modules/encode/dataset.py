"""``qanchor encode``: one vector per distinct event text, stored as float16 beside each vocabulary.

The expensive text encoder runs once per distinct text, never per event. Output per modality:
``vectors/{modality}.npy`` ([vocab size, dim] float16, memory-mapped by the loader). Encoding is
resumable: rows are written into ``vectors/.{modality}.partial.npy`` and a progress file records
how many are done (after the rows are flushed), so a killed job continues where it stopped; a
finished modality whose file still matches the manifest is not encoded again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from data_modules.dataset.manifest import Manifest, file_entry
from data_modules.encode.encoders import ReusingEncoder, make_encoder
from data_modules.util.atomic import atomic_path, read_json, write_json
from data_modules.util.errors import DataError
from data_modules.util.hashing import sha256_file
from data_modules.util.partition import PartitionSpec

VECTORS_DIR = "vectors"
PARTS_DIR = ".parts"  # encode --part I/N writes here; encode --merge N joins them


def _as_list(reuse: str | Path | list[str | Path] | None) -> list[str | Path]:
    if reuse is None:
        return []
    return list(reuse) if isinstance(reuse, list | tuple) else [reuse]


def _encode_rows(texts: list[str], encoder, batch_size: int, final: Path) -> int:
    """Encode ``texts`` into ``final`` (float16), resuming a partial run by the same encoder: rows
    go to ``.NAME.partial.npy`` and ``.NAME.progress.json`` says how many are on disk. Returns the
    rows encoded now."""
    folder, stem = final.parent, final.name.removesuffix(".npy")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{stem}.partial.npy"
    progress_path = folder / f".{stem}.progress.json"
    shape = (len(texts), encoder.dim)
    done = 0
    if partial.exists() and progress_path.exists():
        progress = json.loads(progress_path.read_text())
        if progress.get("encoder_sha256") == encoder.identity and tuple(progress.get("shape", ())) == shape:
            done = int(progress["done"])
    if done:
        out = np.load(partial, mmap_mode="r+")
    else:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    start = done
    with tqdm(total=len(texts), initial=done, desc=f"encode {stem}", unit="text", leave=False) as bar:
        while done < len(texts):
            chunk = texts[done : done + batch_size]
            out[done : done + len(chunk)] = encoder(chunk).astype(np.float16)
            out.flush()  # rows on disk before the progress file says so
            done += len(chunk)
            write_json(
                progress_path, {"encoder_sha256": encoder.identity, "shape": list(shape), "done": done}
            )
            bar.update(len(chunk))
    del out
    with atomic_path(final) as tmp:
        partial.replace(tmp)
    progress_path.unlink(missing_ok=True)
    return done - start


def _vocab_texts(root: Path, modality: str) -> list[str]:
    return pq.read_table(root / "vocab" / f"{modality}.parquet", columns=["text"]).column("text").to_pylist()


def part_rows(n_texts: int, batch_size: int, part: PartitionSpec) -> range:
    """The rows of a vocabulary that encode part ``part`` owns: whole batches of the one-process
    run (a batch is padded as a whole, so the same batches give the same vectors)."""
    batches = -(-n_texts // batch_size)
    first, last = part.index * batches // part.count, (part.index + 1) * batches // part.count
    return range(min(first * batch_size, n_texts), min(last * batch_size, n_texts))


def _part_path(root: Path, modality: str, part: PartitionSpec) -> Path:
    return root / VECTORS_DIR / PARTS_DIR / f"{modality}.{part.name}.npy"


@dataclass
class EncodeConfig:
    """One vector per distinct event text of a built data set (resumable; splits over array tasks)."""

    data: str
    """a built data set"""
    encoder: str = "hash"
    """hash | minilm | PATH to a Hugging Face encoder folder"""
    batch_size: int = 256
    """texts per forward pass"""
    dim: int = 64
    """output size of the hash encoder"""
    pooling: Literal["mean", "cls"] | None = None
    """default: mean for minilm, cls for a PATH"""
    device: str = "cpu"
    """cpu | cuda"""
    part: str | None = None
    """I/N: encode only this part of every vocabulary (whole batches; an array task or a rank: 'auto'
    reads SLURM_ARRAY_TASK_ID/COUNT, else SLURM_PROCID/NTASKS, else RANK/WORLD_SIZE); then --merge N"""
    merge: int = 0
    """join the N parts written by `--part I/N` tasks into the vectors (the same vectors as one process)"""


def run_encode(cfg: EncodeConfig) -> dict:
    """``qanchor encode``."""
    part = resolve_part(cfg.part) if cfg.part else None
    return encode_dataset(cfg.data, cfg.encoder, batch_size=cfg.batch_size, dim=cfg.dim, pooling=cfg.pooling,
                          device=cfg.device, part=part, merge=cfg.merge)  # fmt: skip


def resolve_part(text: str) -> PartitionSpec:
    """``--part I/N``, or ``auto`` from the launcher's environment."""
    import os

    if text != "auto":
        return PartitionSpec.parse(text, "--part")
    env = os.environ
    for index, count in (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"), ("SLURM_PROCID", "SLURM_NTASKS"),
                         ("RANK", "WORLD_SIZE")):  # fmt: skip
        if index in env and count in env:
            return PartitionSpec.parse(f"{env[index]}/{env[count]}", f"--part auto ({index}/{count})")
    raise DataError("--part", "'auto' outside a SLURM array, srun or torchrun", expected="I/N")


def encode_dataset(
    data: str | Path,
    spec: str = "hash",
    *,
    batch_size: int = 256,
    dim: int = 64,
    pooling: str | None = None,
    device: str = "cpu",
    reuse: str | Path | list[str | Path] | None = None,
    part: PartitionSpec | None = None,
    merge: int = 0,
) -> dict:
    """Fill every vocabulary of a built data set with vectors; record them in the manifest.

    ``reuse``: other data sets (one or a list) encoded by the same encoder; their texts' vectors
    are copied, not recomputed (the experiment's second build, and every seed after the first). ``part``: encode only that part of each vocabulary (no manifest change); ``merge``:
    join N such parts into the vectors."""
    root = Path(data)
    manifest = Manifest.load(root)
    encoder = make_encoder(spec, dim=dim, pooling=pooling, device=device)
    encoded, reused = {}, {}
    for m in manifest.event_modalities:
        rel = f"{VECTORS_DIR}/{m}.npy"
        entry = manifest.files.get(rel)
        if (
            entry is not None
            and entry.get("encoder_sha256") == encoder.identity
            and (root / rel).exists()
            and sha256_file(root / rel) == entry["sha256"]
        ):
            encoded[m] = reused[m] = 0  # already done by this encoder
            continue
        known: dict[str, np.ndarray] = {}
        for other in _as_list(reuse):
            known.update(known_vectors(other, m, encoder.identity))
        wrapped = ReusingEncoder(encoder, known)
        texts = _vocab_texts(root, m)
        if part is not None:
            rows = part_rows(len(texts), batch_size, part)
            target = _part_path(root, m, part)
            done_marker = target.with_suffix(".json")
            expected = {"encoder_sha256": encoder.identity, "rows": [rows.start, rows.stop], "batch_size": batch_size,
                        "vocab_sha256": manifest.files[f"vocab/{m}.parquet"]["sha256"]}  # fmt: skip
            if done_marker.exists() and target.exists() and read_json(done_marker) == expected:
                encoded[m] = reused[m] = 0
                continue
            encoded[m] = _encode_rows(texts[rows.start : rows.stop], wrapped, batch_size, target)
            write_json(done_marker, expected)
            reused[m] = wrapped.reused
            continue
        if merge:
            encoded[m], reused[m] = (
                _merge_parts(root, m, texts, encoder.identity, batch_size, manifest, merge),
                0,
            )
        else:
            encoded[m] = _encode_rows(texts, wrapped, batch_size, root / rel)
            reused[m] = wrapped.reused
        manifest.files[rel] = {**file_entry(root, rel, manifest.counts["vocab"][m]), "encoder": encoder.name,
                               "encoder_sha256": encoder.identity}  # fmt: skip
        manifest.save(root)  # after each modality, so a resumed run skips it
    result = {"data": str(root), "encoder": encoder.name, "dim": encoder.dim, "encoded_rows": encoded,
              "reused_rows": reused}  # fmt: skip
    if part is not None:
        return {**result, "part": part.name}
    manifest.encoders["active"] = {"name": encoder.name, "spec": spec, "dim": encoder.dim,
                                   "sha256": encoder.identity}  # fmt: skip
    manifest.save(root)
    import shutil

    shutil.rmtree(root / VECTORS_DIR / PARTS_DIR, ignore_errors=True)
    return result


def _merge_parts(
    root: Path,
    modality: str,
    texts: list[str],
    identity: str,
    batch_size: int,
    manifest: Manifest,
    count: int,
) -> int:
    """Join ``count`` parts of one vocabulary, each checked (same encoder, vocabulary and batch
    size, its rows); a missing or foreign part is an error naming it, and nothing is written."""
    parts = [PartitionSpec(i, count) for i in range(count)]
    arrays = []
    for part in parts:
        path = _part_path(root, modality, part)
        rows = part_rows(len(texts), batch_size, part)
        expected = {"encoder_sha256": identity, "rows": [rows.start, rows.stop], "batch_size": batch_size,
                    "vocab_sha256": manifest.files[f"vocab/{modality}.parquet"]["sha256"]}  # fmt: skip
        marker = path.with_suffix(".json")
        if not path.exists() or not marker.exists():
            raise DataError(path, f"encode part {part.index}/{count} of '{modality}' is missing",
                            expected=f"every `encode --part I/{count}` task finished first")  # fmt: skip
        if read_json(marker) != expected:
            raise DataError(marker, f"part made with other options or data ({read_json(marker)})",
                            expected=str(expected))  # fmt: skip
        arrays.append(np.load(path, mmap_mode="r"))
    final = root / VECTORS_DIR / f"{modality}.npy"
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float16, shape=(len(texts), arrays[0].shape[1])
        )
        at = 0
        for array in arrays:
            out[at : at + len(array)] = array
            at += len(array)
        out.flush()
        del out
    return len(texts)


def load_vectors(root: str | Path, modality: str) -> np.ndarray:
    """A modality's vectors, memory-mapped read-only (the GPU never holds the vocabulary)."""
    return np.load(Path(root) / VECTORS_DIR / f"{modality}.npy", mmap_mode="r")


def encoder_info(manifest: Manifest, root: str | Path) -> dict:
    info = manifest.encoders.get("active")
    if not info:
        raise FileNotFoundError(f"{root}: no event vectors yet; run `qanchor encode --data {root}`")
    return info


def known_vectors(other: str | Path, modality: str, identity: str) -> dict[str, np.ndarray]:
    """text -> vector of ``modality`` in another encoded data set, if the encoder with content
    hash ``identity`` made them (a same-named other encoder does not count)."""
    other = Path(other)
    manifest = Manifest.load(other)
    rel = f"{VECTORS_DIR}/{modality}.npy"
    entry = manifest.files.get(rel)
    if entry is None or entry.get("encoder_sha256") != identity or not (other / rel).exists():
        return {}
    manifest.verify(other, [rel, f"vocab/{modality}.parquet"])
    texts = (
        pq.read_table(other / "vocab" / f"{modality}.parquet", columns=["text"]).column("text").to_pylist()
    )
    vectors = load_vectors(other, modality)
    return {t: vectors[i] for i, t in enumerate(texts)}
