"""``qanchor evaluate``: a linear probe per scenario on frozen embeddings -> AUC and KS.

For each scenario, a logistic regression (scikit-learn, standardised inputs) is fitted on the
users of the scenario's train split and scored on its test split; AUC and KS (max TPR - FPR over
the ROC) come from torchmetrics. Baselines go through the very same probe:
- ``minilm``: all-MiniLM-L6-v2 on a text rendering of each user's profile (the paper's "general
  text-embedding model" row);
- ``mean-events``: each modality's mean event vector, concatenated, plus the tabular features
  (a static user embedding from the same inputs the model sees);
- ``category-counts``: log(1 + count) of the user's seen events per modality and per (modality,
  category), plus tabular (what a feature engineer writes first: activity by kind);
- ``event-counts``: log(1 + count) of every distinct event text in the history, plus tabular (the
  bag of events; in the synthetic world, where events are independent draws from per-user rates,
  it is close to a sufficient statistic, so it is the reference a learned embedding is measured by).
Output: ``REPORT/metrics.json``, ``REPORT/report.md`` (the paper's Table 2 shape: scenarios as
columns, average last, one table for AUC and one for KS) and TensorBoard (ROC curves, projector).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy import sparse
from torchmetrics.functional.classification import binary_auroc, binary_roc

from data_modules.contract.scenarios import load_scenarios
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import load_vectors
from data_modules.util.atomic import atomic_dir, atomic_path, write_json
from data_modules.util.errors import DataError
from qanchor_pl.config import EvaluateConfig
from qanchor_pl.eval import label_efficiency as lab
from qanchor_pl.eval.feature_cache import cached_features
from qanchor_pl.eval.label_efficiency import draw_train
from qanchor_pl.eval.plots import complementarity_png, label_efficiency_png, png_to_array
from qanchor_pl.eval.probe import prepare, probe
from qanchor_pl.eval.significance import bootstrap_avg_auc, paired_delta
from qanchor_pl.eval.writeback import write_back

log = logging.getLogger(__name__)
BASELINES = ("minilm", "mean-events", "category-counts", "event-counts", "time-windows")
#: Feature matrices up to this many cells (users x columns, 400 MB of float32) are kept dense.
DENSE_LIMIT = 100_000_000
#: The time-aware reference's windows: days before the cutoff.
TIME_WINDOWS = (7, 30, 90)


# -- the probe ----------------------------------------------------------------------------------
def auc_ks(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    s, y = torch.from_numpy(scores).float(), torch.from_numpy(labels).long()
    fpr, tpr, _ = binary_roc(s, y)
    return {"auc": float(binary_auroc(s, y)), "ks": float((tpr - fpr).max())}


def benchmark(data: Path, scenario: str) -> pl.DataFrame:
    from data_modules.contract.names import check_name

    path = data / "benchmarks" / f"{check_name(scenario, '--scenarios')}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no benchmark for scenario '{scenario}'")
    return pl.read_parquet(path)


def split_benchmark(
    bench: pl.DataFrame, split: str, val_seed: int = 0, val_fraction: float = 0.2
) -> pl.DataFrame:
    """The benchmark with its ``split`` column as the probe reads it. ``test``: as built (fit on train,
    score on test). ``validation``: the test users are dropped and the train users carved as prompt
    tuning carves them (``data_modules.dataset.splits``): fit on the rest ("train"), score on the carve ("test").
    Choices are made on ``validation``; the test split is read for the final table only."""
    if split == "test":
        return bench
    if split != "validation":
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    from data_modules.dataset.splits import in_validation

    train = bench.filter(pl.col("split") == "train")
    carve = [in_validation(u, val_seed, val_fraction) for u in train["user_id"].to_list()]
    return train.with_columns(pl.Series("split", ["test" if c else "train" for c in carve]))


def evaluate_features(
    features: dict[str, Any],
    data: Path,
    scenarios: list[str],
    probe_c: float | str = 1.0,
    split: str = "test",
    val_seed: int = 0,
    jobs: int | None = None,
    draw: tuple[float, int] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Probe every scenario. ``features``: scenario -> (user ids, matrix) or one shared (ids, matrix).
    Returns (scenario -> {auc, ks, probe_c, users}, scenario -> (scores, labels) of the scored part).

    ``draw`` = (fraction, index): fit on that label-efficiency draw of the train users only.
    Scenarios are probed ``jobs`` at a time (threads; default: the CPU count, at most 4), each with
    one math-library thread, so the figures do not depend on ``jobs`` or the machine's cores."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    jobs = jobs or min(4, os.cpu_count() or 1)
    shared = SharedInputs()
    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(
            pool.map(
                lambda name: _probe_scenario(features, data, name, probe_c, split, val_seed, draw, shared),
                scenarios,
            )
        )
    metrics = {name: m for name, (m, _) in zip(scenarios, done)}
    curves = {name: c for name, (_, c) in zip(scenarios, done) if c is not None}
    return metrics, curves


class SharedInputs:
    """The probe's prepared train inputs (:func:`prepare`), computed once per matrix and train
    rows and shared by the scenarios of one row that have the same train users (rule-labelled
    scenarios all do): the same numbers as preparing each, at a tenth of the cost on a wide
    baseline. Thread-safe: a second thread waits for the first's result."""

    def __init__(self) -> None:
        self._lock, self._done = threading.Lock(), {}

    def get(self, matrix: Any, rows: np.ndarray, x_rows: Any) -> tuple[Any, Any]:
        """:func:`prepare` of ``x_rows`` (= ``matrix[rows]``, already taken by the caller)."""
        key = (id(matrix), hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest())
        with self._lock:  # one preparation at a time: the others want the same one
            if key not in self._done:
                self._done[key] = prepare(x_rows)
            return self._done[key]


def _probe_scenario(
    features: dict[str, Any],
    data: Path,
    name: str,
    probe_c: float | str,
    split: str,
    val_seed: int,
    draw: tuple[float, int] | None = None,
    shared: SharedInputs | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """One scenario's cell: (metrics, (scores, labels) or None when AUC is undefined)."""
    ids, mat = features[name] if name in features else features["*"]
    row = {u: i for i, u in enumerate(ids)}
    bench = split_benchmark(benchmark(data, name), split, val_seed)
    if draw is not None:
        bench = draw_train(bench, draw[0], draw[1], name)
    missing = [u for u in bench["user_id"].to_list() if u not in row]
    if missing:
        raise ValueError(
            f"scenario '{name}': {len(missing)} benchmark users have no embedding (e.g. {missing[:3]})"
        )
    parts = {}
    where = data / "benchmarks" / f"{name}.parquet"
    for part in ("train", "test"):  # (not `split`: that names the table being made)
        b = bench.filter(pl.col("split") == part)
        if b.height == 0:
            raise DataError(
                where, f"the {split} table's {part} part has no users", expected="users in both parts"
            )
        if part == "train" and b["label"].n_unique() < 2:
            raise DataError(where, f"every {part} user of the {split} table has label {b['label'][0]}: "
                                   "the probe cannot be fit", expected="both labels among the train users")  # fmt: skip
        idx = np.array([row[u] for u in b["user_id"].to_list()])
        parts[part] = (mat[idx], b["label"].to_numpy().astype(np.int64), idx)
    test_labels = parts["test"][1]
    if len(np.unique(test_labels)) < 2:
        # AUC and KS are undefined: the cell reads n/a and the average skips it
        log.warning("scenario '%s': the scored split has only label %d (%d users); AUC/KS undefined",
                    name, int(test_labels[0]) if len(test_labels) else -1, len(test_labels))  # fmt: skip
        return {"auc": None, "ks": None}, None
    prepared = shared.get(mat, parts["train"][2], parts["train"][0]) if shared is not None else None
    scores, c = probe(parts["train"][0], parts["train"][1], parts["test"][0], c=probe_c, prepared=prepared)
    return {**auc_ks(scores, test_labels), "probe_c": c, "users": int(len(test_labels))}, (
        scores,
        test_labels,
    )


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


# -- reporting ----------------------------------------------------------------------------------
def with_average(metrics: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Add "Avg": the mean over the scenarios whose AUC/KS is defined."""
    defined = [m for m in metrics.values() if m["auc"] is not None]
    avg = {k: float(np.mean([m[k] for m in defined])) if defined else None for k in ("auc", "ks")}
    return {**metrics, "Avg": avg}


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(rows: dict[str, dict[str, dict[str, float]]], scenarios: list[str]) -> str:
    lines = []
    for metric in ("auc", "ks"):
        head = ["Method", *scenarios, "Avg"]
        lines += [f"**{metric.upper()}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, per in rows.items():
            cells = [_cell(per[s][metric]) for s in [*scenarios, "Avg"]]
            if metric == "auc" and "auc_se" in per["Avg"]:
                cells[-1] += f" ± {per['Avg']['auc_se']:.4f}"
            lines.append("| " + " | ".join([name, *cells]) + " |")
        if metric == "auc" and any("auc_se" in per["Avg"] for per in rows.values()):
            lines += ["", "± : bootstrap standard error of Avg AUC over the probe's test users."]
        if metric == "auc" and any(per[s]["auc"] is None for per in rows.values() for s in scenarios):
            lines += ["", "n/a: the scenario's test split has a single class; Avg is over the others."]
        lines.append("")
    return "\n".join(lines)


def comparisons_markdown(comparisons: list[dict[str, Any]]) -> str:
    """The paired comparisons as a table (empty string when there are none)."""
    if not comparisons:
        return ""
    lines = ["**Paired differences in Avg AUC** (bootstrap over test users, 95% interval)", "",
             "| A | B | A - B | 95% interval |", "|---|---|---|---|"]  # fmt: skip
    for c in comparisons:
        lines.append(f"| {c['a']} | {c['b']} | {c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] |")
    return "\n".join(lines) + "\n"


def log_tensorboard(
    out: Path,
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    projector: tuple | None,
    rows: dict[str, dict[str, Any]] | None = None,
    hparams: dict[str, Any] | None = None,
    images: dict[str, Path] | None = None,
) -> None:
    """ROC curves as scalar series (x = FPR in 1/1000, y = TPR), an embedding projector sample and,
    per row, its Avg AUC/KS in the HPARAMS view. Written to a fresh folder that then replaces
    ``out/tensorboard``: a repeated evaluation does not draw every curve twice."""
    from torch.utils.tensorboard import SummaryWriter

    with atomic_dir(out / "tensorboard") as tmp:
        writer = SummaryWriter(str(tmp))
        for tag, path in (images or {}).items():  # the report's PNGs, as images
            writer.add_image(tag, png_to_array(path), dataformats="HWC")
        _write_tensorboard(writer, curves, projector, rows, hparams)


def _write_tensorboard(
    writer: Any, curves: dict, projector: tuple | None, rows: dict | None, hparams: dict | None
) -> None:
    grid = np.linspace(0, 1, 101)
    for method, per in curves.items():
        for scenario, (scores, labels) in per.items():
            fpr, tpr, _ = binary_roc(torch.from_numpy(scores).float(), torch.from_numpy(labels).long())
            tpr_at = np.interp(grid, fpr.numpy(), tpr.numpy())
            for x, y in zip(grid, tpr_at):
                writer.add_scalar(f"roc/{scenario}/{method}", float(y), global_step=int(round(x * 1000)))
    if projector is not None:
        mat, meta, header = projector
        writer.add_embedding(torch.from_numpy(mat), metadata=meta, metadata_header=header, tag="users")
    for name, row in (rows or {}).items():
        avg = row["Avg"]
        if avg["auc"] is not None:
            writer.add_hparams({"row": name, **(hparams or {})},
                               {"hp/avg_auc": avg["auc"], "hp/avg_ks": avg["ks"]}, run_name="hparams/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name))  # fmt: skip
    writer.close()


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Probe every row; ``cfg.compare`` lists (row A, row B) pairs whose Avg AUC difference gets a
    paired-bootstrap 95% interval (``metrics.json`` "comparisons"). Every row's Avg also gets
    ``auc_se``, its bootstrap standard error. ``split="validation"`` probes the validation carve
    of the train users instead of the test split (see :func:`split_benchmark`)."""
    embeddings, data, out, names, scenarios = cfg.embeddings, cfg.data, cfg.out, cfg.names, cfg.scenarios
    baselines = () if cfg.baselines == "none" else tuple(b for b in cfg.baselines.split(",") if b)
    projector_users, profile_tokens, compare, n_boot = (
        cfg.projector_users,
        cfg.profile_tokens,
        cfg.compare,
        cfg.n_boot,
    )
    probe_c, split, val_seed, minilm_cache = cfg.probe_c, cfg.split, cfg.val_seed, cfg.minilm_cache
    data_dir, out_dir = Path(data), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every file the build and encode listed (benchmarks, shards, vocabularies, vectors) is checked
    # against the manifest before use: a corrupt or swapped file is refused, named
    Manifest.load(data_dir).verify(data_dir)
    known = [s.name for s in load_scenarios(data_dir / "scenarios.json")]
    chosen = known if scenarios == "all" else [s for s in scenarios.split(",") if s]
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        raise DataError(
            data_dir / "scenarios.json", f"no scenario {unknown or 'chosen'}", expected=f"some of {known}"
        )
    rows, curves, seconds, feature_cache, efficiency = {}, {}, {}, {}, {}
    if cfg.complement and cfg.complement not in BASELINES:
        raise ValueError(f"complement: unknown baseline {cfg.complement!r}; known: {BASELINES}")
    if cfg.complement and cfg.complement not in baselines:
        baselines = (*baselines, cfg.complement)  # the row the complement rows are compared with
    for b in baselines:
        t0 = time.perf_counter()
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; known: {BASELINES}")
        if b == "minilm":
            cache = Path(minilm_cache or out_dir) / f"minilm-profile-{profile_tokens}tok.npy"
            compute = partial(minilm_features, data_dir, cache, max_tokens=profile_tokens)
            cache_name = f"minilm-{profile_tokens}tok"
        else:
            compute = partial({"mean-events": mean_event_features, "category-counts": category_count_features,
                               "event-counts": event_count_features, "time-windows": time_window_features}[b], data_dir)  # fmt: skip
            cache_name = b
        feats = cached_features(
            Path(cfg.feature_cache) if cfg.feature_cache else None, data_dir, cache_name, compute
        )
        if b == cfg.complement:
            feature_cache[b] = feats
        metrics, curves[b] = evaluate_features(feats, data_dir, chosen, probe_c, split, val_seed)
        rows[b] = with_average(metrics)
        efficiency[b] = _label_efficiency(cfg, feats, data_dir, chosen, probe_c, rows[b])
        seconds[b] = _timed(b, rows[b], split, t0)
    projector = None
    for i, folder in enumerate(embeddings):
        name = names[i] if names and i < len(names) else Path(folder).name
        t0 = time.perf_counter()
        feats = embedding_features(Path(folder))
        metrics, curves[name] = evaluate_features(feats, data_dir, chosen, probe_c, split, val_seed)
        rows[name] = with_average(metrics)
        if not _tuned_on_labels(Path(folder)):  # tuned prompts saw every train label: not in that table
            efficiency[name] = _label_efficiency(cfg, feats, data_dir, chosen, probe_c, rows[name])
        seconds[name] = _timed(name, rows[name], split, t0)
        if rows[name]["Avg"]["auc"] is not None:  # into the training run's HPARAMS view
            write_back(Path(folder), name, split, rows[name]["Avg"]["auc"], rows[name]["Avg"]["ks"])
        if projector is None:
            projector = _projector_sample(feats, data_dir, chosen, projector_users)
        if cfg.complement:
            both = complement_name(cfg.complement, name)
            t0 = time.perf_counter()
            joined = concatenated_features(feature_cache[cfg.complement], feats)
            metrics, curves[both] = evaluate_features(joined, data_dir, chosen, probe_c, split, val_seed)
            rows[both] = with_average(metrics)
            seconds[both] = _timed(both, rows[both], split, t0)
            compare = [*compare, (both, cfg.complement)]
    boots = {name: bootstrap_avg_auc(curves[name], n_boot) for name in rows if curves[name]}
    for name, draws in boots.items():
        rows[name]["Avg"]["auc_se"] = float(np.std(draws))
    comparisons = []
    for a, b in compare:
        unknown = {a, b} - set(curves)
        if unknown:
            raise ValueError(f"compare: no row named {sorted(unknown)}; rows: {sorted(curves)}")
        delta = paired_delta(curves[a], curves[b], boot_a=boots.get(a), boot_b=boots.get(b))
        comparisons.append({"a": a, "b": b, **delta})
    complementarity = [
        c for c in comparisons if cfg.complement and c["b"] == cfg.complement and c["a"].startswith("[")
    ]
    images = {}
    extra_md = ""
    if complementarity:
        images["complementarity"] = complementarity_png(complementarity, out_dir / "complementarity.png")
        extra_md += "\n" + complementarity_markdown(complementarity)
    fractions = sorted(float(f) for f in cfg.label_fractions)
    if fractions:
        images["label_efficiency"] = label_efficiency_png(
            efficiency, fractions, out_dir / "label_efficiency.png"
        )
        extra_md += "\n" + lab.markdown(efficiency, fractions)
    write_json(out_dir / "metrics.json",
               {"split": split, "scenarios": chosen, "rows": rows, "comparisons": comparisons,
                "complementarity": complementarity, "label_efficiency": efficiency if fractions else {},
                "seconds": seconds})  # fmt: skip
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(markdown(rows, chosen) + comparisons_markdown(comparisons) + extra_md)
    log_tensorboard(out_dir, curves, projector, rows, {"split": split, "probe_c": str(probe_c)}, images)
    return {
        "out": str(out_dir),
        "rows": {n: {"auc": r["Avg"]["auc"], "ks": r["Avg"]["ks"]} for n, r in rows.items()},
    }


def _label_efficiency(
    cfg: EvaluateConfig, feats: dict, data: Path, scenarios: list[str], probe_c: float | str, full: dict
) -> dict[str, dict]:
    """One row's label-efficiency cells: fraction -> mean Avg AUC over draws; "1.0" = the full table."""
    cells: dict[str, dict] = {"1.0": {"auc": full["Avg"]["auc"], "sd": 0.0, "draws": [full["Avg"]["auc"]]}}
    for f in cfg.label_fractions:
        per_draw = [evaluate_features(feats, data, scenarios, probe_c, cfg.split, cfg.val_seed, draw=(float(f), d))[0]
                    for d in range(cfg.label_draws)]  # fmt: skip
        cells[str(float(f))] = lab.average_over_draws(per_draw)
    return cells


def _tuned_on_labels(folder: Path) -> bool:
    """Whether an embedding folder was made with prompts tuned on the benchmark's train labels."""
    import json

    manifest = folder / "manifest.json"
    return manifest.exists() and bool(json.loads(manifest.read_text()).get("job", {}).get("prompts"))


def complementarity_markdown(items: list[dict[str, Any]]) -> str:
    """Baseline alone vs the baseline beside each embedding, same probe, paired interval."""
    lines = ["**Complementarity** (the baseline's features beside the embedding vs the baseline alone; "
             "same probe, paired bootstrap 95 % interval)", "",
             "| Baseline + embedding | Baseline | Difference | 95% interval |", "|---|---|---|---|"]  # fmt: skip
    for c in items:
        lines.append(f"| {c['a']} | {c['b']} | {c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] |")
    return "\n".join(lines) + "\n"


def _timed(name: str, row: dict[str, Any], split: str, t0: float) -> float:
    """Seconds since ``t0`` (features + probes of one row), also logged with the row's Avg AUC."""
    took = round(time.perf_counter() - t0, 1)
    auc = row["Avg"]["auc"]
    log.info(
        "evaluate (%s): %s Avg AUC %s in %.1f s", split, name, "n/a" if auc is None else f"{auc:.4f}", took
    )
    return took


def _projector_sample(feats: dict, data: Path, scenarios: list[str], n: int) -> tuple | None:
    """``n`` users' embeddings for the first scenario, labelled (user, label, split)."""
    name = scenarios[0]
    if name not in feats:
        return None
    ids, mat = feats[name]
    bench = benchmark(data, name)
    lab = dict(zip(bench["user_id"].to_list(), zip(bench["label"].to_list(), bench["split"].to_list())))
    take = [i for i, u in enumerate(ids) if u in lab][:n]
    meta = [[ids[i], f"{name}={lab[ids[i]][0]}", lab[ids[i]][1]] for i in take]
    return mat[take], meta, ["user", "label", "split"]
