"""Vectorised collation: ragged per-user lists -> padded batch arrays, with no per-sample Python loop;
and the rows of a collated batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
from lightning_utilities.core.apply_func import apply_to_collection


def batch_rows(batch: Any, index: slice | list[int], rows: int) -> Any:
    """Users ``index`` (a slice, or row numbers) of a nested batch of ``rows`` users: every tensor
    and list whose first dimension is ``rows`` is indexed, anything else (a shared entry, a 0-d
    tensor) is kept whole."""

    def take(x: torch.Tensor | list) -> torch.Tensor | list:
        if len(x.shape if isinstance(x, torch.Tensor) else x) == 0 or len(x) != rows:
            return x
        if isinstance(index, slice):
            return x[index]
        return (
            x[torch.as_tensor(index, dtype=torch.long)]
            if isinstance(x, torch.Tensor)
            else [x[i] for i in index]
        )

    return apply_to_collection(batch, (torch.Tensor, list), take)


def _ragged_index(lengths: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows with ``lengths`` of which the LAST ``keep`` items are kept, return
    (flat source indices, destination row, destination position)."""
    cum = np.concatenate([[0], np.cumsum(lengths)])
    cum_keep = np.concatenate([[0], np.cumsum(keep)])
    total = int(cum_keep[-1])
    rows = np.repeat(np.arange(len(lengths)), keep)
    pos = np.arange(total) - np.repeat(cum_keep[:-1], keep)
    src = np.repeat(cum[:-1] + lengths - keep, keep) + pos
    return src, rows, pos


def pad_events(ids: pa.Array, vectors: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The most recent ``cap`` event vectors per user, padded: ([B, K, D] float16, [B, K] bool).

    K is the longest kept sequence in the batch (at least 1, so shapes never collapse)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    lengths = ids.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = ids.flatten().to_numpy(zero_copy_only=False)
    keep = np.minimum(lengths, cap)
    src, rows, pos = _ragged_index(lengths, keep)
    k = max(int(keep.max()) if len(keep) else 0, 1)
    out = np.zeros((len(lengths), k, vectors.shape[1]), dtype=np.float16)
    mask = np.zeros((len(lengths), k), dtype=bool)
    out[rows, pos] = vectors[values[src]]
    mask[rows, pos] = True
    return out, mask


def pad_token_ids(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists: ([B, L] int64, [B, L] bool), L >= 1."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    src, rows, pos = _ragged_index(lengths, lengths)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    ids[rows, pos] = flat[src]
    mask[rows, pos] = True
    return ids, mask


def cutoff_ms(cutoff: str) -> int:
    """A manifest's cutoff (ISO, naive like the shards' timestamps) in epoch milliseconds."""
    return int(np.datetime64(cutoff.split("+")[0], "ms").astype(np.int64))


def pad_event_ages(ts: pa.Array, cutoff: int, cap: int) -> np.ndarray:
    """Age in days before ``cutoff`` (epoch ms) of the same events :func:`pad_events` keeps: [B, K] float32."""
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    lengths = ts.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = ts.flatten().cast(pa.int64()).to_numpy(zero_copy_only=False)
    keep = np.minimum(lengths, cap)
    src, rows, pos = _ragged_index(lengths, keep)
    out = np.zeros((len(lengths), max(int(keep.max()) if len(keep) else 0, 1)), dtype=np.float32)
    out[rows, pos] = (cutoff - values[src]) / 86_400_000.0
    return out


def category_key(category: str) -> int:
    """A category name as a positive 63-bit integer, the same in every process and data set: batches
    carry categories as these keys and a model maps them to its own category list (so data cut at
    another time, with other categories, still lines up by name). 0 means "no category"."""
    from data_modules.util.hashing import stable_hash64

    return (stable_hash64("category:" + category, "little") & 0x7FFF_FFFF_FFFF_FFFF) or 1


def _flat_keys(values: pa.Array) -> np.ndarray:
    """Category strings (nulls allowed) -> int64 keys (0 for null), hashing each distinct name once."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = values.dictionary_encode() if not pa.types.is_dictionary(values.type) else values
    names = encoded.dictionary.to_pylist()
    table = np.array([category_key(n) for n in names] + [0], dtype=np.int64)
    idx = encoded.indices.fill_null(len(names)).to_numpy(zero_copy_only=False).astype(np.int64)
    return table[idx]


def pad_categories(cats: pa.Array, cap: int | None) -> np.ndarray:
    """Category keys (:func:`category_key`) of the events :func:`pad_events` keeps (the last ``cap``;
    ``None``: all), padded with 0: [B, K] int64."""
    if isinstance(cats, pa.ChunkedArray):
        cats = cats.combine_chunks()
    lengths = cats.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    keys = _flat_keys(cats.flatten())
    keep = lengths if cap is None else np.minimum(lengths, cap)
    src, rows, pos = _ragged_index(lengths, keep)
    out = np.zeros((len(lengths), max(int(keep.max()) if len(keep) else 0, 1)), dtype=np.int64)
    out[rows, pos] = keys[src]
    return out


def pad_ragged(values: pa.Array, fill: float, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Every item of each row, right-padded with ``fill``: ([B, K] values, [B, K] bool mask)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lengths = values.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = values.flatten()
    if pa.types.is_timestamp(flat.type):
        flat = flat.cast(pa.int64())
    flat = flat.to_numpy(zero_copy_only=False)
    src, rows, pos = _ragged_index(lengths, lengths)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.full((len(lengths), width), fill, dtype=dtype)
    mask = np.zeros((len(lengths), width), dtype=bool)
    out[rows, pos] = flat[src]
    mask[rows, pos] = True
    return out, mask
