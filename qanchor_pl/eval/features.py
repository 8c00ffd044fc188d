"""Feature sources the probe reads: the embeddings, the baselines (one function each) and their
concatenation with an embedding (complementarity).

- ``minilm``: all-MiniLM-L6-v2 on a text rendering of each user's profile (the paper's "general
  text-embedding model" row);
- ``mean-events``: each modality's mean event vector, concatenated, plus the tabular features
  (a static user embedding from the same inputs the model sees);
- ``category-counts``: log(1 + count) of the user's seen events per modality and per (modality,
  category), plus tabular (what a feature engineer writes first: activity by kind);
- ``event-counts``: log(1 + count) of every distinct event text in the history, plus tabular (the
  bag of events; in the synthetic world, where events are independent draws from per-user rates,
  it is close to a sufficient statistic, so it is the reference a learned embedding is measured by);
- ``time-windows``: mean event vectors and log counts over the last 7, 30 and 90 days, plus tabular
  (the time-aware reference for logs whose recent weeks say more than the whole history).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import load_vectors
from data_modules.util.atomic import atomic_path

BASELINES = ("minilm", "mean-events", "category-counts", "event-counts", "time-windows")


#: Feature matrices up to this many cells (users x columns, 400 MB of float32) are kept dense.
DENSE_LIMIT = 100_000_000


#: The time-aware reference's windows: days before the cutoff.
TIME_WINDOWS = (7, 30, 90)


# -- feature sources ----------------------------------------------------------------------------
def embedding_features(folder: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """scenario -> (user ids, [N, E]) from a ``qanchor embed`` output folder."""
    from qanchor_pl.serve.embed import read_embeddings

    table = read_embeddings(folder)
    out = {}
    scen = np.array(table.column("scenario").to_pylist())
    users = np.array(table.column("user_id").to_pylist())
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    for name in np.unique(scen):
        keep = scen == name
        out[str(name)] = (users[keep].tolist(), emb[keep])
    return out


def concatenated_features(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, tuple[list[str], Any]]:
    """Per scenario, ``base``'s and ``extra``'s columns side by side for ``extra``'s users (in
    ``extra``'s order). Either may be one shared matrix (key "*") or one per scenario."""
    from scipy import sparse as sp

    def of(feats: dict[str, Any], name: str) -> tuple[list[str], Any]:
        return feats[name] if name in feats else feats["*"]

    out = {}
    for name in [k for k in extra if k != "*"] or ["*"]:
        ids, mat = of(extra, name)
        base_ids, base_mat = of(base, name)
        where = {u: i for i, u in enumerate(base_ids)}
        missing = [u for u in ids if u not in where]
        if missing:
            raise ValueError(
                f"scenario '{name}': {len(missing)} users have no baseline features (e.g. {missing[:3]})"
            )
        rows = base_mat[np.array([where[u] for u in ids], dtype=np.int64)]
        if sp.issparse(rows):
            rows = rows.toarray()
        out[name] = (
            list(ids),
            np.concatenate([np.asarray(rows, dtype=np.float32), mat.astype(np.float32)], 1),
        )
    return out


def complement_name(baseline: str, row: str) -> str:
    """The table row of ``baseline``'s features beside embedding ``row``."""
    return f"[{baseline} ; {row}]"


def _profiles(data: Path, manifest: Manifest) -> pl.DataFrame:
    cols = ["user_id", *(f"ev_{m}" for m in manifest.event_modalities), "tabular"]
    return pl.concat([pl.read_parquet(data / n, columns=cols) for n in manifest.shard_files])


def _with_tabular(blocks: list, prof: pl.DataFrame, manifest: Manifest) -> dict:
    """The per-modality blocks and the tabular features side by side, keyed "*" (every scenario).

    Dense when it fits :data:`DENSE_LIMIT` cells (the probe then centres every column, which the
    solver needs to converge on mixed dense/count blocks); sparse CSR only beyond, as for a
    long-tailed vocabulary's counts."""
    tab = np.array(prof["tabular"].to_list(), dtype=np.float32) if manifest.tabular_features else None
    blocks = blocks + ([tab] if tab is not None and tab.size else [])
    width = sum(b.shape[1] for b in blocks)
    if any(sparse.issparse(b) for b in blocks) and prof.height * width > DENSE_LIMIT:
        return {"*": (prof["user_id"].to_list(), sparse.hstack(blocks, format="csr", dtype=np.float32))}
    dense = [b.toarray() if sparse.issparse(b) else b for b in blocks]
    return {"*": (prof["user_id"].to_list(), np.concatenate(dense, axis=1).astype(np.float32, copy=False))}


def _log_count_matrix(rows: list[np.ndarray], width: int) -> sparse.csr_matrix:
    """log(1 + count) of each column id per row, sparse: a long-tailed vocabulary has ~10^5 texts,
    far too wide for a dense users x texts matrix."""
    lengths = [len(r) for r in rows]
    coo = sparse.coo_matrix(
        (np.ones(sum(lengths), dtype=np.float32),
         (np.repeat(np.arange(len(rows)), lengths), np.concatenate(rows + [np.zeros(0, np.int64)]).astype(np.int64))),
        shape=(len(rows), width),
    )  # fmt: skip
    counts = coo.tocsr()  # duplicates are summed
    counts.data = np.log1p(counts.data)
    return counts


def mean_event_features(data: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per user: each modality's mean event vector (zeros if none), concatenated, plus tabular."""
    manifest = Manifest.load(data)
    prof = _profiles(data, manifest)
    blocks = []
    for m in manifest.event_modalities:
        vec = np.asarray(load_vectors(data, m), dtype=np.float32)
        means = np.zeros((prof.height, vec.shape[1]), dtype=np.float32)
        for i, ids in enumerate(prof[f"ev_{m}"].to_list()):
            if ids:
                means[i] = vec[np.asarray(ids)].mean(0)
        blocks.append(means)
    return _with_tabular(blocks, prof, manifest)


def event_count_features(data: Path) -> dict[str, tuple[list[str], Any]]:
    """Per user: log(1 + count) of each vocabulary entry of each modality (sparse), plus tabular."""
    manifest = Manifest.load(data)
    prof = _profiles(data, manifest)
    blocks = []
    for m in manifest.event_modalities:
        size = pl.scan_parquet(data / "vocab" / f"{m}.parquet").select(pl.len()).collect().item()
        rows = [np.asarray(ids or [], dtype=np.int64) for ids in prof[f"ev_{m}"].to_list()]
        blocks.append(_log_count_matrix(rows, size))
    return _with_tabular(blocks, prof, manifest)


def category_count_features(data: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per user: log(1 + events) per modality and per (modality, category) seen, plus tabular."""
    manifest = Manifest.load(data)
    cols = ["user_id", "tabular", *(f"cat_{m}" for m in manifest.event_modalities)]
    prof = pl.concat([pl.read_parquet(data / n, columns=cols) for n in manifest.shard_files])
    blocks = []
    for m in manifest.event_modalities:
        cats = prof[f"cat_{m}"].to_list()
        names = sorted({c for row in cats for c in row if c is not None})
        index = {c: j for j, c in enumerate(names)}
        counts = np.zeros((prof.height, len(names) + 1), dtype=np.float32)
        for i, row in enumerate(cats):
            counts[i, -1] = len(row)
            for c in row:
                if c is not None:
                    counts[i, index[c]] += 1.0
        blocks.append(np.log1p(counts))
    return _with_tabular(blocks, prof, manifest)


def time_window_features(
    data: Path, windows: tuple[int, ...] = TIME_WINDOWS, min_users: int = 2
) -> dict[str, tuple[list[str], Any]]:
    """The time-aware reference an engineer would build: for each window of the last ``w`` days
    before the cutoff, each modality's mean event vector and log(1 + count) of each vocabulary
    entry, all windows side by side, plus tabular. Count columns are kept for entries that at least
    ``min_users`` users have (label-free, like building a vocabulary: a text only one user ever
    has cannot carry over from train to test users, and a long-tailed vocabulary would otherwise
    make the matrix users x 3 x vocabulary wide)."""
    manifest = Manifest.load(data)
    cols = ["user_id", "tabular", *(f"{p}_{m}" for m in manifest.event_modalities for p in ("ev", "ts"))]
    prof = pl.concat([pl.read_parquet(data / n, columns=cols) for n in manifest.shard_files])
    cutoff = np.datetime64(manifest.cutoff.split("+")[0], "ms")
    blocks = []
    for m in manifest.event_modalities:
        vec = np.asarray(load_vectors(data, m), dtype=np.float32)
        ids = [np.asarray(r, dtype=np.int64) for r in prof[f"ev_{m}"].to_list()]
        ages = [(cutoff - np.asarray(r, dtype="datetime64[ms]")) / np.timedelta64(1, "D")
                for r in prof[f"ts_{m}"].to_list()]  # fmt: skip
        users_per_entry = np.bincount(
            np.concatenate([np.unique(r) for r in ids] + [np.zeros(0, np.int64)]), minlength=len(vec)
        )
        kept = np.flatnonzero(users_per_entry >= min_users)
        column = np.full(len(vec), -1, dtype=np.int64)
        column[kept] = np.arange(len(kept))
        for w in windows:
            means = np.zeros((prof.height, vec.shape[1]), dtype=np.float32)
            count_rows = []
            for i, (row, age) in enumerate(zip(ids, ages)):
                inside = row[age <= w]
                if inside.size:
                    means[i] = vec[inside].mean(0)
                cols_i = column[inside]
                count_rows.append(cols_i[cols_i >= 0])
            blocks += [means, _log_count_matrix(count_rows, len(kept))]
    return _with_tabular(blocks, prof, manifest)


def profile_texts(data: Path, top: int = 8) -> tuple[list[str], list[str]]:
    """A text rendering of each user's history: per modality its most frequent events with counts."""
    manifest = Manifest.load(data)
    prof = _profiles(data, manifest)
    vocab = {
        m: pl.read_parquet(data / "vocab" / f"{m}.parquet").sort("id")["text"].to_list()
        for m in manifest.event_modalities
    }
    from data_modules.contract.modalities import meta_from_json

    meta = meta_from_json(manifest.modality_meta)
    texts = []
    for row in prof.iter_rows(named=True):
        pieces = []
        for m in manifest.event_modalities:
            common = Counter(row[f"ev_{m}"] or []).most_common(top)
            if common:
                pieces.append(
                    f"{meta[m].label if m in meta else m}: "
                    + "; ".join(f"{vocab[m][i]} x{c}" for i, c in common)
                )
        texts.append(". ".join(pieces) or "no activity")
    return prof["user_id"].to_list(), texts


def minilm_features(
    data: Path, cache: Path | None = None, batch_size: int = 64, max_tokens: int = 256
) -> dict[str, tuple[list[str], np.ndarray]]:
    """all-MiniLM-L6-v2 (mean pooled, ``max_tokens``) over :func:`profile_texts`; cached if ``cache``."""
    from data_modules.encode.encoders import HFEncoder, minilm_path

    users, texts = profile_texts(data)
    if cache is not None and cache.exists():
        mat = np.load(cache)
        if mat.shape[0] == len(users):
            return {"*": (users, mat)}
    enc = HFEncoder(minilm_path(), pooling="mean", max_length=max_tokens)
    mat = np.concatenate([enc(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]).astype(
        np.float32
    )
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, mat)
    return {"*": (users, mat)}


def baseline_source(
    name: str, data: Path, profile_tokens: int, minilm_cache: Path
) -> tuple[str, Callable[[], dict]]:
    """(cache name, the function computing its features) of baseline ``name``: one function each."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")
    if name == "minilm":
        cache = minilm_cache / f"minilm-profile-{profile_tokens}tok.npy"
        return f"minilm-{profile_tokens}tok", partial(minilm_features, data, cache, max_tokens=profile_tokens)
    source = {"mean-events": mean_event_features, "category-counts": category_count_features,
              "event-counts": event_count_features, "time-windows": time_window_features}[name]  # fmt: skip
    return name, partial(source, data)
