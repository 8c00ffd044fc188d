"""Why a demo table looks the way it does: two measurements behind the README's reading of it.

``python -m qanchor_pl.eval.diagnostics --data runs/demo/data --pretrain-data runs/demo/data-pretrain``

- ``mean_event_dimensions``: the probe's Avg AUC on the mean-event features reduced to k principal
  components (unsupervised, all users) and to a random k-d projection: is the signal
  low-dimensional, i.e. could a 128-d embedding hold it?
- ``scenario_mentions``: the share of D_future answers (pretraining targets) that name each
  scenario's target events: which scenarios the pretraining objective speaks about at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from data_modules.contract.scenarios import load_scenarios
from data_modules.dataset.manifest import Manifest
from qanchor_pl.eval.evaluate import evaluate_features
from qanchor_pl.eval.features import mean_event_features
from qanchor_pl.eval.report import with_average


def mean_event_dimensions(data: Path, dims: tuple[int, ...] = (16, 32, 64, 128), seed: int = 0) -> dict:
    """Avg AUC of the mean-event features: all of them, k principal components, k random directions."""
    scenarios = [s.name for s in load_scenarios(data / "scenarios.json")]
    users, mat = mean_event_features(data)["*"]
    z = (mat - mat.mean(0)) / (mat.std(0) + 1e-6)

    def avg_auc(x: np.ndarray) -> float:
        metrics, _ = evaluate_features({"*": (users, x)}, data, scenarios)
        return round(with_average(metrics)["Avg"]["auc"], 4)

    u, s, _ = np.linalg.svd(z, full_matrices=False)
    out = {"all": {"dims": int(mat.shape[1]), "avg_auc": avg_auc(mat)}}
    for k in dims:
        k = min(k, len(s))
        g = np.random.default_rng(seed).standard_normal((z.shape[1], k)) / np.sqrt(z.shape[1])
        out[f"pca{k}"] = avg_auc(u[:, :k] * s[:k])
        out[f"random{k}"] = avg_auc(z @ g)
    return out


def scenario_mentions(data: Path, source: str = "future") -> dict[str, float]:
    """Share of the ``source`` QA answers (D_future by default) naming each scenario's target events.

    An event is named when its rendered text (without the amount band) appears in the answer; the
    synthetic world's catalogue says which texts belong to a scenario's categories."""
    from data_modules.synth.catalogue import CATALOG

    manifest = Manifest.load(data)
    cols = ["qa_answer", "qa_source"]
    qa = pl.concat([pl.read_parquet(data / f, columns=cols) for f in manifest.shard_files])
    answers = qa.explode(cols).filter(pl.col("qa_source") == source)["qa_answer"].to_list()
    if not answers:
        raise ValueError(f"{data}: no QA answers of source '{source}'")
    out = {}
    for s in load_scenarios(data / "scenarios.json"):
        keys = {
            a.template.format(item=item, band="@").split("@")[-1]
            for a in CATALOG
            if a.category in s.categories
            for item in a.items
        }
        out[s.name] = round(sum(any(k in text for k in keys) for text in answers) / len(answers), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m qanchor_pl.eval.diagnostics", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", required=True, help="the evaluation data (benchmarks, profiles)")
    p.add_argument("--pretrain-data", help="the pretraining data (its D_future answers); default --data")
    args = p.parse_args(argv)
    report = {
        "mean_event_dimensions": mean_event_dimensions(Path(args.data)),
        "d_future_mentions": scenario_mentions(Path(args.pretrain_data or args.data)),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
