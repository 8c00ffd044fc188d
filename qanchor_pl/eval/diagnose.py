"""``qanchor diagnose``: where along the model the scenario information is kept or lost.

A linear probe (the evaluation's, trained on the benchmark's train users minus a validation part,
scored on that validation part; the test split is never read) on the features of every stage:

1. mean event features (each modality's mean event vector + tabular: the model's raw input);
2. the modality tokens (the user encoder's output, concatenated; with the count token);
3. the ``<USER_EMB>`` token's hidden state for the scenario's query (the head's input);
4. ``u``: after the projection head and L2 normalisation (what ``qanchor embed`` writes);
5. ``u`` with the scenario's tuned prompt (when ``--prompts`` is given).

Output: ``OUT/diagnose.json``, ``OUT/diagnose.md`` (stages as rows, scenarios as columns, Avg
last) and TensorBoard scalars ``diagnose/<stage>`` (Avg AUC) under ``OUT/tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from qanchor_pl.config import DiagnoseConfig
from qanchor_pl.model.sequence import Role

STAGES = ("mean event features", "modality tokens", "USER_EMB hidden state", "u (after the head)",
          "u (prompt-tuned)")  # fmt: skip


@torch.no_grad()
def stage_features(model, batch: dict[str, Any], queries) -> dict[str, dict[str, np.ndarray]]:
    """stage -> scenario ("*" when the stage does not depend on it) -> [B, D] for one batch."""
    tok = model.user_tokens(batch)
    tokens = [tok.modality[n] for n in model.user_encoder.token_names]
    if tok.counts is not None:  # the count token is the encoder's output too
        tokens.append(tok.counts)
    out: dict[str, dict[str, np.ndarray]] = {"modality tokens": {"*": torch.cat(tokens, -1).float().numpy()}}
    b = len(batch["user_id"])
    for q in queries:
        ids = torch.tensor(q.ids, dtype=torch.long).expand(b, -1)
        mask = torch.ones_like(ids, dtype=torch.bool)
        packed = model.anchor_sequence({**batch, "query_ids": ids, "query_mask": mask}, tok=tok)
        h = model.hidden_states(packed)
        hu = h[torch.arange(b), packed.position_of(Role.USER_EMB)]
        out.setdefault("USER_EMB hidden state", {})[q.name] = hu.float().numpy()
        out.setdefault("u (after the head)", {})[q.name] = (
            model.project_user(hu, model.user_summary(tok)).float().numpy()
        )
        if q.prompt is not None:
            u = model.anchor({**batch, "query_ids": ids, "query_mask": mask}, prompt=q.prompt)
            out.setdefault("u (prompt-tuned)", {})[q.name] = u.float().numpy()
    return out


def run_diagnose(cfg: DiagnoseConfig) -> dict[str, Any]:
    """Probe every stage on the validation part of each scenario's train users; write the table."""
    from data_modules.dataset.splits import in_validation
    from data_modules.loading.datamodule import UserUDataModule
    from data_modules.util.atomic import atomic_path, write_json
    from qanchor_pl.eval.evaluate import auc_ks, benchmark, probe
    from qanchor_pl.eval.features import mean_event_features
    from qanchor_pl.model.load import load_model
    from qanchor_pl.serve.embed import scenario_queries

    model, data, out, prompts, scenarios = cfg.model, cfg.data, cfg.out, cfg.prompts, cfg.scenarios
    batch_size, val_fraction, seed, probe_c = cfg.batch_size, cfg.val_fraction, cfg.seed, cfg.probe_c
    data_dir, out_dir = Path(data), Path(out)
    qmodel = load_model(model).eval()
    queries = scenario_queries(qmodel, data_dir, scenarios, prompts)
    tokenizer = str(Path(model) / "tokenizer") if Path(model).is_dir() else qmodel.config.inputs.tokenizer
    users_dm = UserUDataModule(data, tokenizer=tokenizer, batch_size=batch_size)
    users: list[str] = []
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    for batch in users_dm.profile_dataset():
        users += batch["user_id"]
        for stage, per in stage_features(qmodel, batch, queries).items():
            for key, x in per.items():
                parts.setdefault(stage, {}).setdefault(key, []).append(x)
    feats = {stage: {k: np.concatenate(v) for k, v in per.items()} for stage, per in parts.items()}
    mean_users, mean_x = mean_event_features(data_dir)["*"]
    order = {u: i for i, u in enumerate(mean_users)}
    feats["mean event features"] = {"*": mean_x[[order[u] for u in users]]}
    row = {u: i for i, u in enumerate(users)}

    table: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        if stage not in feats:
            continue
        per: dict[str, float | None] = {}
        for q in queries:
            bench = benchmark(data_dir, q.name).filter(pl.col("split") == "train")
            val = np.array([in_validation(u, seed, val_fraction) for u in bench["user_id"].to_list()])
            idx = np.array([row[u] for u in bench["user_id"].to_list()])
            y = bench["label"].to_numpy().astype(np.int64)
            x = feats[stage].get(q.name, feats[stage].get("*"))[idx]
            if len(np.unique(y[val])) < 2 or len(np.unique(y[~val])) < 2:
                per[q.name] = None  # a single class on one side: AUC undefined
                continue
            scores, _ = probe(x[~val], y[~val], x[val], seed=seed, c=probe_c)
            per[q.name] = auc_ks(scores, y[val])["auc"]
        defined = [v for v in per.values() if v is not None]
        per["Avg"] = float(np.mean(defined)) if defined else None
        table[stage] = per
    names = [q.name for q in queries]
    result = {"split": f"validation: {val_fraction:.0%} of each scenario's train users (seed {seed})",
              "probe_c": probe_c, "scenarios": names, "stages": table}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "diagnose.json", result)
    lines = ["| Stage | " + " | ".join(names) + " | Avg |", "|---" * (len(names) + 2) + "|"]
    for stage, per in table.items():
        cells = ["n/a" if per[n] is None else f"{per[n]:.4f}" for n in [*names, "Avg"]]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    with atomic_path(out_dir / "diagnose.md") as tmp:
        tmp.write_text("**Validation AUC along the model**\n\n" + "\n".join(lines) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out_dir / "tensorboard")) as tb:
        for stage, per in table.items():
            if per["Avg"] is not None:
                tb.add_scalar(f"diagnose/{stage}", per["Avg"], 0)
    return {"out": str(out_dir), "avg_auc": {s: per["Avg"] for s, per in table.items()}}
