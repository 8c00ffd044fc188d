"""A content-addressed cache of baseline features, shared by evaluations of the same users.

A baseline's features depend on the users' histories (shards, vocabularies, text vectors, the
cutoff) and never on the labels or the train/test split. The experiment evaluates twice per seed
(validation, test) and its seeds differ only in the split and the training seed, so on a world
with a long-tailed vocabulary the features (the time-window reference's above all) would be
rebuilt six times for three seeds. The key is a hash of every manifest file that is not a
benchmark, the cutoff and the baseline's name: a changed input is a different key, never a
stale hit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from data_modules.dataset.manifest import Manifest
from data_modules.util.atomic import atomic_dir

#: Bump when a feature function changes what it computes: old entries then stop matching.
FEATURES_VERSION = 1


def features_key(data: Path, name: str) -> str:
    """The cache key of baseline ``name`` on the built data set ``data`` (split-independent)."""
    manifest = Manifest.load(data)
    inputs = sorted(
        (rel, entry.get("sha256", ""))
        for rel, entry in manifest.files.items()
        if not rel.startswith(("benchmarks/", "refresh/"))
    )
    blob = json.dumps({"name": name, "version": FEATURES_VERSION, "cutoff": manifest.cutoff, "files": inputs})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_features(cache: Path | None, data: Path, name: str, compute: Callable[[], dict]) -> dict[str, Any]:
    """``compute()`` (scenario -> (user ids, dense or CSR matrix)), read from ``cache`` when this
    baseline was computed on the same inputs before, else computed and stored (atomically)."""
    if cache is None:
        return compute()
    folder = Path(cache) / f"{name}-{features_key(data, name)}"
    if (folder / "index.json").exists():
        return _load(folder)
    feats = compute()
    with atomic_dir(folder) as tmp:
        _save(tmp, feats)
    return feats


def _save(folder: Path, feats: dict[str, Any]) -> None:
    index = {}
    for i, (key, (ids, mat)) in enumerate(feats.items()):
        stem = f"block{i}"
        if sparse.issparse(mat):
            sparse.save_npz(folder / f"{stem}.npz", sparse.csr_matrix(mat), compressed=False)
        else:
            np.save(folder / f"{stem}.npy", np.asarray(mat))
        index[key] = {"stem": stem, "sparse": bool(sparse.issparse(mat)), "ids": list(ids)}
    (folder / "index.json").write_text(json.dumps(index))


def _load(folder: Path) -> dict[str, Any]:
    index = json.loads((folder / "index.json").read_text())
    out = {}
    for key, entry in index.items():
        stem = folder / entry["stem"]
        mat = sparse.load_npz(f"{stem}.npz").tocsr() if entry["sparse"] else np.load(f"{stem}.npy")
        out[key] = (entry["ids"], mat)
    return out
