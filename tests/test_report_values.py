"""Issue 25's report tables, recomputed independently: complementarity ([counts ; embedding] vs
counts alone) and label efficiency (stratified draws of the train users), their PNG files and
TensorBoard images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from qanchor_pl.eval.features import category_count_features, embedding_features
from tests.conftest import run_qanchor


def _fraction(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def _auc(x_train, y_train, x_test, y_test) -> float:
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(scaler.transform(x_train), y_train)
    return roc_auc_score(y_test, clf.predict_proba(scaler.transform(x_test))[:, 1])


@pytest.fixture(scope="module")
def report(built, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("values")
    run_qanchor("embed", "--model", str(pretrained), "--data", str(built), "--scenarios", "all",
                "--out", str(out / "emb"), "--accelerator", "cpu", "--batch-size", "64")  # fmt: skip
    run_qanchor("evaluate", "--embeddings", f"[{out / 'emb'}]", "--names", "[Q]", "--data", str(built),
                "--out", str(out / "rep"), "--baselines", "category-counts", "--probe_c", "1",
                "--complement", "category-counts", "--label_fractions", "[0.25, 0.5]", "--label_draws", "2")  # fmt: skip
    return out, json.loads((out / "rep" / "metrics.json").read_text())


def _benchmarks(built, scenarios):
    return {s: pl.read_parquet(built / "benchmarks" / f"{s}.parquet") for s in scenarios}


def test_complementarity_row_equals_a_probe_on_counts_beside_the_embedding(built, report):
    out, metrics = report
    counts_ids, counts = category_count_features(built)["*"]
    emb = embedding_features(out / "emb")
    where = {u: i for i, u in enumerate(counts_ids)}
    aucs = []
    for s, bench in _benchmarks(built, metrics["scenarios"]).items():
        ids, mat = emb[s]
        row = {u: i for i, u in enumerate(ids)}
        parts = {}
        for split in ("train", "test"):
            b = bench.filter(pl.col("split") == split)
            users = b["user_id"].to_list()
            x = np.concatenate([counts[[where[u] for u in users]], mat[[row[u] for u in users]]], 1)
            parts[split] = (x, b["label"].to_numpy())
        if len(np.unique(parts["test"][1])) < 2:
            continue
        aucs.append(_auc(*parts["train"], *parts["test"]))
    got = metrics["rows"]["[category-counts ; Q]"]["Avg"]["auc"]
    assert abs(got - np.mean(aucs)) < 2e-3
    (item,) = metrics["complementarity"]
    assert (item["a"], item["b"]) == ("[category-counts ; Q]", "category-counts")
    want = got - metrics["rows"]["category-counts"]["Avg"]["auc"]
    assert abs(item["delta"] - want) < 1e-6 and item["lo"] <= item["delta"] <= item["hi"]


def test_label_efficiency_equals_probes_fitted_on_stratified_draws(built, report):
    out, metrics = report
    ids, counts = category_count_features(built)["*"]
    where = {u: i for i, u in enumerate(ids)}
    for fraction in (0.25, 0.5):
        per_draw = []
        for draw in range(2):
            aucs = []
            for s, bench in _benchmarks(built, metrics["scenarios"]).items():
                test = bench.filter(pl.col("split") == "test")
                if test["label"].n_unique() < 2:
                    continue
                train = bench.filter(pl.col("split") == "train").to_dicts()
                chosen = []
                for label in (0, 1):
                    users = sorted((_fraction(f"label-draw:{fraction}:{draw}:{s}:{r['user_id']}"), r["user_id"])
                                   for r in train if r["label"] == label)  # fmt: skip
                    chosen += [(u, label) for _, u in users[: max(2, round(fraction * len(users)))]]
                x_tr = counts[[where[u] for u, _ in chosen]]
                x_te = counts[[where[u] for u in test["user_id"].to_list()]]
                aucs.append(_auc(x_tr, np.array([y for _, y in chosen]), x_te, test["label"].to_numpy()))
            per_draw.append(np.mean(aucs))
        cell = metrics["label_efficiency"]["category-counts"][str(fraction)]
        assert abs(cell["auc"] - np.mean(per_draw)) < 2e-3
        assert np.allclose(cell["draws"], per_draw, atol=2e-3)
    full = metrics["label_efficiency"]["Q"]["1.0"]["auc"]
    assert full == metrics["rows"]["Q"]["Avg"]["auc"]


def test_report_figures_are_decodable_pngs_and_tensorboard_images(report):
    out, _ = report
    for name in ("complementarity", "label_efficiency"):
        with Image.open(out / "rep" / f"{name}.png") as img:
            img.load()
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 50
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "rep" / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert {"complementarity", "label_efficiency"} <= set(acc.Tags()["images"])
    shown = acc.Images("label_efficiency")[0]
    assert shown.width > 300 and shown.height > 50
    text = (out / "rep" / "report.md").read_text()
    assert "**Complementarity**" in text and "**Label efficiency**" in text
