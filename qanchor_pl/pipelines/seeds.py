"""Several seeds of one experiment, summarised: every row's Avg AUC/KS as mean ± s.d.

Seed ``s`` is a whole experiment in ``OUT/seed-s`` (its own train/test user split, training and
probe seeds; the raw data is the same). One seed's paired intervals say how sure that run is; the
spread over seeds says how much a different draw of users and initialisations moves the table,
which on a few thousand users is as large as the intervals.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(reports: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per row: Avg AUC and KS over seeds; per comparison: the deltas, their mean ± s.d. and how many
    seeds' 95 % intervals lie entirely above 0 / reach it / lie entirely below it."""
    rows: dict[str, Any] = {}
    for name in reports[0]["table"]:
        if not all(name in r["table"] for r in reports):
            continue
        aucs = [r["table"][name]["Avg"]["auc"] for r in reports]
        kss = [r["table"][name]["Avg"]["ks"] for r in reports]
        (am, asd), (km, ksd) = _mean_sd(aucs), _mean_sd(kss)
        rows[name] = {"auc_mean": am, "auc_sd": asd, "ks_mean": km, "ks_sd": ksd, "auc": aucs, "ks": kss}
    comparisons = []
    for first in reports[0]["comparisons"]:
        key = (first["a"], first["b"])
        per_seed = [c for r in reports for c in r["comparisons"] if (c["a"], c["b"]) == key]
        if len(per_seed) != len(reports):
            continue
        deltas = [c["delta"] for c in per_seed]
        mean, sd = _mean_sd(deltas)
        comparisons.append({
            "a": key[0], "b": key[1], "delta_mean": mean, "delta_sd": sd, "deltas": deltas,
            "intervals": [[c["lo"], c["hi"]] for c in per_seed],
            "above_0": sum(c["lo"] > 0 for c in per_seed), "below_0": sum(c["hi"] < 0 for c in per_seed),
        })  # fmt: skip
    return {"seeds": seeds, "rows": rows, "comparisons": comparisons}


def summary_markdown(summary: dict[str, Any]) -> str:
    n = len(summary["seeds"])
    lines = [f"Avg over the scenarios, {n} seeds ({', '.join(map(str, summary['seeds']))}): mean ± s.d.", "",
             "| Row | Avg AUC | Avg KS | AUC per seed |", "|---|---|---|---|"]  # fmt: skip
    for name, r in summary["rows"].items():
        per = ", ".join(f"{a:.3f}" for a in r["auc"])
        lines.append(
            f"| {name} | {r['auc_mean']:.3f} ± {r['auc_sd']:.3f} | {r['ks_mean']:.3f} ± {r['ks_sd']:.3f} | {per} |"
        )
    lines += ["", "| A - B | Δ Avg AUC, mean ± s.d. | seeds with 95 % interval > 0 / < 0 | intervals |",
              "|---|---|---|---|"]  # fmt: skip
    for c in summary["comparisons"]:
        spans = "; ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in c["intervals"])
        lines.append(f"| {c['a']} - {c['b']} | {c['delta_mean']:+.3f} ± {c['delta_sd']:.3f} | "
                     f"{c['above_0']} / {c['below_0']} of {n} | {spans} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run_seeds(cfg, run_one) -> dict[str, Any]:
    """``cfg.seeds`` experiments (seeds ``cfg.seed`` ...), each resumable, then ``seeds.md``/``seeds.json``."""
    from data_modules.util.atomic import atomic_path, write_json

    root = Path(cfg.out)
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    reports = []
    for s in seeds:
        # every seed after the first copies the first's text vectors; all share one baseline
        # feature cache (features depend on the histories, not on the seed's split)
        first = [str(root / f"seed-{seeds[0]}")] if s != seeds[0] else []
        one = replace(
            cfg,
            out=str(root / f"seed-{s}"),
            seed=s,
            seeds=1,
            timings={},
            reuse_from=first,
            feature_cache=cfg.feature_cache or str(root / "features"),
        )
        run_one(one)
        reports.append(json.loads((root / f"seed-{s}" / "report.json").read_text()))
    summary = summarize(reports, seeds)
    write_json(root / "seeds.json", summary)
    with atomic_path(root / "seeds.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    return {"report": str(root / "seeds.md"), "seeds": seeds}
