"""``qanchor evaluate``: a linear probe per scenario on frozen embeddings -> AUC and KS.

For each scenario, a logistic regression (scikit-learn, standardised inputs) is fitted on the
users of the scenario's train split and scored on its test split; AUC and KS (max TPR - FPR over
the ROC) come from torchmetrics. Baselines (:mod:`qanchor_pl.eval.features`, one function each) go
through the very same probe. Output (:mod:`qanchor_pl.eval.report`): ``REPORT/metrics.json``,
``REPORT/report.md`` (the paper's Table 2 shape: scenarios as columns, average last, one table for
AUC and one for KS) and TensorBoard (ROC curves, projector).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

from data_modules.contract.scenarios import load_scenarios
from data_modules.dataset.manifest import Manifest
from data_modules.util.errors import DataError
from qanchor_pl.config import EvaluateConfig
from qanchor_pl.eval import label_efficiency as lab
from qanchor_pl.eval.feature_cache import cached_features
from qanchor_pl.eval.features import (
    BASELINES,
    baseline_source,
    complement_name,
    concatenated_features,
    embedding_features,
)
from qanchor_pl.eval.label_efficiency import draw_train
from qanchor_pl.eval.probe import prepare, probe
from qanchor_pl.eval.report import with_average, write_outputs
from qanchor_pl.eval.significance import bootstrap_avg_auc, paired_delta
from qanchor_pl.eval.writeback import write_back

log = logging.getLogger(__name__)


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
        cache_name, compute = baseline_source(b, data_dir, profile_tokens, Path(minilm_cache or out_dir))
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
    write_outputs(
        out_dir, cfg, chosen, rows, comparisons, complementarity, efficiency, seconds, curves, projector
    )
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
