"""`qanchor evaluate`: AUC/KS against first principles, the report, TensorBoard, and the kv-cache bench."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import sparse

from data_modules.contract.scenarios import load_scenarios
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import load_vectors
from qanchor_pl.eval.evaluate import auc_ks, probe
from qanchor_pl.eval.features import event_count_features, profile_texts, time_window_features
from tests.conftest import run_qanchor
from tests.helpers.tb import scalars


def test_auc_and_ks_match_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + 0.8 * y
    got = auc_ks(s, y)
    pos, neg = s[y == 1], s[y == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    ks = max(abs((pos >= t).mean() - (neg >= t).mean()) for t in np.unique(s))
    assert abs(got["auc"] - auc) < 1e-6 and abs(got["ks"] - ks) < 1e-6


def test_profile_texts_render_each_users_frequent_events(built):
    users, texts = profile_texts(built)
    assert len(users) == len(texts) == 300 and len(set(users)) == 300
    assert all(t for t in texts) and any(
        "payments: " in t and " x" in t for t in texts
    )  # modalities.json labels


def test_event_counts_are_log1p_counts_of_each_history_text_then_tabular(built):
    users, mat = event_count_features(built)["*"]
    assert not sparse.issparse(mat)  # small enough to stay dense (the probe centres it)
    manifest = Manifest.load(built)
    shard = pl.read_parquet(built / manifest.shard_files[0])
    row = shard.row(0, named=True)
    got = mat[users.index(row["user_id"])]
    offset = 0
    for m in manifest.event_modalities:
        size = pl.read_parquet(built / "vocab" / f"{m}.parquet").height
        want = np.zeros(size)
        for i in row[f"ev_{m}"] or []:
            want[i] += 1
        assert np.allclose(got[offset : offset + size], np.log1p(want)), m
        offset += size
    assert np.allclose(got[offset:], row["tabular"])


def test_time_windows_are_mean_vectors_and_counts_over_the_last_days_then_tabular(built):
    users, mat = time_window_features(built, windows=(7, 30))["*"]
    manifest = Manifest.load(built)
    shards = pl.concat([pl.read_parquet(built / n) for n in manifest.shard_files])
    cutoff = np.datetime64(manifest.cutoff.split("+")[0], "ms")
    # Count columns: entries that at least 2 users have (recomputed here from the shards).
    kept = {}
    for m in manifest.event_modalities:
        users_of = {}
        for row in shards[f"ev_{m}"].to_list():
            for e in set(row or []):
                users_of[e] = users_of.get(e, 0) + 1
        kept[m] = sorted(e for e, n in users_of.items() if n >= 2)
    dims = {m: load_vectors(built, m).shape[1] for m in manifest.event_modalities}
    assert mat.shape[1] == sum(2 * (dims[m] + len(kept[m])) for m in manifest.event_modalities) + len(
        manifest.tabular_features
    )
    checked_recent = 0
    for row in shards.head(40).iter_rows(named=True):
        got, offset = mat[users.index(row["user_id"])], 0
        for m in manifest.event_modalities:
            vec = np.asarray(load_vectors(built, m), dtype=np.float32)
            ids = np.asarray(row[f"ev_{m}"] or [], dtype=np.int64)
            age = (cutoff - np.asarray(row[f"ts_{m}"] or [], dtype="datetime64[ms]")) / np.timedelta64(1, "D")
            for w in (7, 30):
                inside = ids[age <= w]
                mean = vec[inside].mean(0) if inside.size else np.zeros(dims[m])
                counts = np.array([(inside == e).sum() for e in kept[m]], dtype=float)
                assert np.allclose(got[offset : offset + dims[m]], mean, atol=1e-5), (m, w)
                offset += dims[m]
                assert np.allclose(got[offset : offset + len(kept[m])], np.log1p(counts)), (m, w)
                offset += len(kept[m])
                checked_recent += int(w == 7 and 0 < inside.size < ids.size)
        assert np.allclose(got[offset:], row["tabular"])
    assert checked_recent > 0  # some users have events both inside and outside the 7-day window


def test_evaluate_writes_metrics_table_and_tensorboard(built, pretrained, tmp_path):
    run_qanchor("embed", "--model", str(pretrained), "--data", str(built), "--scenarios", "all",
                "--out", str(tmp_path / "emb"), "--accelerator", "cpu", "--batch-size", "64")  # fmt: skip
    report = json.loads(run_qanchor("evaluate", "--embeddings", f"[{tmp_path / 'emb'}]", "--names", "[Q-Anchor]",
                                    "--data", str(built), "--out", str(tmp_path / "rep"),
                                    "--profile-tokens", "64", "--compare", "[[Q-Anchor, mean-events]]").stdout)  # fmt: skip
    assert set(report["rows"]) == {"minilm", "mean-events", "event-counts", "Q-Anchor"}
    assert (tmp_path / "rep" / "minilm-profile-64tok.npy").exists()
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    scenarios = metrics["scenarios"]
    assert len(scenarios) == 10
    assert set(metrics["seconds"]) == set(metrics["rows"]) and min(metrics["seconds"].values()) >= 0
    # the 300-user world's Money test split has no positive user: undefined, n/a, left out of Avg
    defined = [s for s in scenarios if s != "Money"]
    for row in metrics["rows"].values():
        assert set(row) == {*scenarios, "Avg"}
        assert row["Money"] == {"auc": None, "ks": None}
        assert all(0 <= row[s]["auc"] <= 1 and 0 <= row[s]["ks"] <= 1 for s in defined)
        assert abs(row["Avg"]["auc"] - np.mean([row[s]["auc"] for s in defined])) < 1e-9
    assert all(0 < row["Avg"]["auc_se"] < 0.2 for row in metrics["rows"].values())
    (cmp,) = metrics["comparisons"]
    assert (cmp["a"], cmp["b"]) == ("Q-Anchor", "mean-events") and cmp["lo"] <= cmp["delta"] <= cmp["hi"]
    want = metrics["rows"]["Q-Anchor"]["Avg"]["auc"] - metrics["rows"]["mean-events"]["Avg"]["auc"]
    assert abs(cmp["delta"] - want) < 1e-6
    table = (tmp_path / "rep" / "report.md").read_text()
    assert "| Q-Anchor | mean-events |" in table and "n/a" in table
    assert table.count("| Q-Anchor | 0.") == 2 and "| Method | " + " | ".join(scenarios) + " | Avg |" in table
    tb = scalars(tmp_path / "rep" / "tensorboard")
    roc = tb[f"roc/{scenarios[0]}/Q-Anchor"]
    assert roc[0] == (0, roc[0][1]) and roc[-1][0] == 1000 and abs(roc[-1][1] - 1.0) < 1e-6
    assert list((tmp_path / "rep" / "tensorboard").rglob("projector_config.pbtxt"))
    # written back to the training run: its hyperparameters with the probe's Avg AUC/KS (HPARAMS view)
    probe_run = pretrained.parent.parent / "tensorboard" / "run" / "probe-test-Q-Anchor"
    back = scalars(probe_run)
    assert back["hp/probe_avg_auc"][0][1] == pytest.approx(
        metrics["rows"]["Q-Anchor"]["Avg"]["auc"], rel=1e-6
    )
    assert back["hp/probe_avg_ks"][0][1] == pytest.approx(metrics["rows"]["Q-Anchor"]["Avg"]["ks"], rel=1e-6)


def test_kv_cache_bench_reports_speedups():
    out = json.loads(run_qanchor("bench", "kv-cache", "--users", "2", "--scenarios", "3", "--hidden", "64",
                                 "--layers", "1", "--intermediate", "128", "--repeats", "1", "--json").stdout)  # fmt: skip
    assert out["prefix_tokens"] > 600 and out["suffix_tokens"] == 21
    assert out["max_abs_diff"] < 1e-5 and out["speedup"] > 0
    n, p, q = 3, out["prefix_tokens"], out["suffix_tokens"]
    assert abs(out["ideal_speedup"] - round(n * (p + q) / (p + n * q), 2)) < 1e-9


def test_probe_cross_validates_c_on_train_only_and_falls_back_on_rare_classes():
    from qanchor_pl.eval.probe import PROBE_CS

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 40))
    y = (x[:, 0] + 0.5 * rng.standard_normal(300) > 0).astype(np.int64)
    scores, c = probe(x[:200], y[:200], x[200:], c="cv")
    assert c in PROBE_CS and scores.shape == (100,)
    assert probe(x[:200], y[:200], x[200:], c=0.5)[1] == 0.5
    rare = np.zeros(200, dtype=np.int64)
    rare[:2] = 1
    assert probe(x[:200], rare, x[200:], c="cv")[1] == 1.0  # 2 positives: no 3 folds, C = 1


@pytest.mark.parametrize("as_sparse", [False, True])
def test_the_row_span_rotation_of_wide_features_leaves_the_fitted_probe_unchanged(as_sparse):
    """An L2 logistic regression's weights lie in the row span of its train matrix: fitting in the
    rotated coordinates (fewer columns) must give the same scores, dense (SVD) and sparse (Gram)."""
    from sklearn.linear_model import LogisticRegression

    from qanchor_pl.eval.probe import row_span_rotation

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 900)) * (rng.random((300, 900)) < 0.05)
    y = (x @ rng.standard_normal(900) + rng.normal(0, 2, 300) > 0).astype(np.int64)
    train, test = (
        (sparse.csr_matrix(x[:200]), sparse.csr_matrix(x[200:])) if as_sparse else (x[:200], x[200:])
    )
    rotate = row_span_rotation(train)
    assert rotate(train).shape == (200, 200)  # 900 columns -> the rank of 200 train rows
    for c in (0.01, 1.0):
        fit = LogisticRegression(C=c, solver="newton-cg", tol=1e-12, max_iter=1000)
        plain = fit.fit(train, y[:200]).predict_proba(test)[:, 1]
        rotated = fit.fit(rotate(train), y[:200]).predict_proba(rotate(test))[:, 1]
        assert np.abs(plain - rotated).max() < 1e-7
    assert row_span_rotation(x[:, :150]) is None  # not wider than tall: nothing to save


def test_wide_count_features_turn_sparse_beyond_the_dense_limit(built, monkeypatch):
    import qanchor_pl.eval.features as features

    dense_users, dense = event_count_features(built)["*"]
    monkeypatch.setattr(features, "DENSE_LIMIT", 10)  # as if the vocabulary were long-tailed
    sparse_users, wide = features.event_count_features(built)["*"]
    assert sparse.issparse(wide) and sparse_users == dense_users
    np.testing.assert_array_equal(wide.toarray(), dense)


def test_the_probe_fits_sparse_counts_as_it_fits_the_same_counts_dense():
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(0.3, size=(300, 40)).astype(np.float32))
    y = (x[:, :5].sum(1) + rng.normal(0, 0.5, 300) > 0.6).astype(np.int64)
    dense, c_dense = probe(x[:200], y[:200], x[200:], c=1.0)
    sparse_scores, _ = probe(sparse.csr_matrix(x[:200]), y[:200], sparse.csr_matrix(x[200:]), c=1.0)
    # without centring the same model is reached (the intercept is not penalised), up to the
    # solver's tolerance
    assert np.abs(dense - sparse_scores).max() < 0.02 and c_dense == 1.0
    a_dense, a_sparse = auc_ks(dense, y[200:])["auc"], auc_ks(sparse_scores, y[200:])["auc"]
    assert abs(a_dense - a_sparse) < 0.005 and a_sparse > 0.7


def test_the_validation_split_is_the_tuning_carve_of_the_train_users_only(built):
    from data_modules.dataset.splits import in_validation
    from qanchor_pl.eval.evaluate import benchmark, split_benchmark

    bench = benchmark(built, "Takeout")
    val = split_benchmark(bench, "validation", val_seed=3)
    train = bench.filter(pl.col("split") == "train")
    assert set(val["user_id"]) == set(train["user_id"])  # no test user is read
    carved = {u for u in train["user_id"] if in_validation(u, 3, 0.2)}
    assert set(val.filter(pl.col("split") == "test")["user_id"]) == carved and 0 < len(carved) < train.height
    assert split_benchmark(bench, "test").equals(bench)


def test_every_scenario_of_a_validation_table_scores_its_carve_and_never_a_test_user(built):
    """Each scenario's cell is scored on that scenario's validation carve: the loop over scenarios
    must not fall back to the test split after the first one (it once did, through a shadowed name)."""
    from qanchor_pl.eval.evaluate import benchmark, evaluate_features, split_benchmark
    from qanchor_pl.eval.features import mean_event_features

    scenarios = [s.name for s in load_scenarios(built / "scenarios.json")][:3]
    metrics, curves = evaluate_features(mean_event_features(built), built, scenarios, split="validation")
    for name in scenarios:
        carve = split_benchmark(benchmark(built, name), "validation", 0).filter(pl.col("split") == "test")
        assert metrics[name]["users"] == carve.height
        if name in curves:
            np.testing.assert_array_equal(curves[name][1], carve["label"].to_numpy())


def test_probing_scenarios_in_parallel_gives_the_figures_of_one_at_a_time(built):
    from qanchor_pl.eval.evaluate import evaluate_features
    from qanchor_pl.eval.features import mean_event_features

    scenarios = [s.name for s in load_scenarios(built / "scenarios.json")]
    feats = mean_event_features(built)
    one = evaluate_features(feats, built, scenarios, probe_c="cv", jobs=1)
    three = evaluate_features(feats, built, scenarios, probe_c="cv", jobs=3)
    assert one[0] == three[0] and len(one[0]) == len(scenarios)
    for name in one[1]:
        np.testing.assert_array_equal(one[1][name][0], three[1][name][0])


def test_scenarios_with_the_same_train_users_share_one_prepared_input_and_its_figures(built):
    from qanchor_pl.eval.evaluate import SharedInputs, _probe_scenario, benchmark, split_benchmark

    scenarios = [s.name for s in load_scenarios(built / "scenarios.json")]
    feats = time_window_features(built)  # wide: the rotation runs
    assert feats["*"][1].shape[1] > 300
    shared = SharedInputs()
    for split in ("test", "validation"):
        for name in scenarios:
            alone = _probe_scenario(feats, built, name, "cv", split, 0)
            together = _probe_scenario(feats, built, name, "cv", split, 0, shared=shared)
            assert alone[0] == together[0]
            if alone[1] is not None:
                np.testing.assert_array_equal(alone[1][0], together[1][0])
    trains = {tuple(sorted(split_benchmark(benchmark(built, n), s).filter(pl.col("split") == "train")["user_id"]))
              for n in scenarios for s in ("test", "validation")}  # fmt: skip
    assert len(shared._done) == len(trains) < 2 * len(scenarios)  # one preparation per train set


def test_the_sparse_cross_product_splits_dense_columns_off_and_stays_exact():
    from qanchor_pl.eval.probe import SparseCross

    rng = np.random.default_rng(0)
    dense_block = rng.normal(size=(60, 40))  # mean vectors: every row stored
    counts = sparse.random(60, 500, density=0.02, random_state=1)  # a long tail: few rows each
    x = sparse.hstack([dense_block, counts], format="csr")
    a = sparse.hstack(
        [rng.normal(size=(7, 40)), sparse.random(7, 500, density=0.05, random_state=2)], format="csr"
    )
    cross = SparseCross(x)
    assert len(cross.dense_cols) == 40 and len(cross.sparse_cols) == 500
    np.testing.assert_allclose(cross(a), (a @ x.T).toarray(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cross(x), (x @ x.T).toarray(), rtol=1e-12, atol=1e-12)
