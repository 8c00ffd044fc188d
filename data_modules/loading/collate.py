"""Vectorised collation: ragged per-user lists -> padded batch arrays, with no per-sample Python loop."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


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
