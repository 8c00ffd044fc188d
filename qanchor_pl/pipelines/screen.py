"""Screen pretraining variants on the validation carve, reusing one pair of built data sets.

    python -m qanchor_pl.pipelines.screen --pretrain-data DATA_PRE --data DATA --out DIR \\
        --variants base,future,... --seeds 0,1

Each (variant, seed) is one pretraining + export + base embedding (no prompt tuning), skipped when
its embedding exists; then one evaluation on the validation carve probes every embedding, the
own-input baselines and "[category counts ; embedding]", with paired intervals of every variant
against the paper's recipe of the same seed and against the baselines. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qanchor_pl.pipelines.experiment import VARIANTS


def run_variant(pretrain_data: Path, data: Path, out: Path, name: str, seed: int, steps: int) -> Path:
    from qanchor_pl.config import EmbedConfig
    from qanchor_pl.model.export import export_model
    from qanchor_pl.model.load import load_model
    from qanchor_pl.serve.embed import run_embed
    from qanchor_pl.train.lightning_cli import run_pretrain

    tag = f"{name}-s{seed}"
    emb = out / "embed" / tag
    if (emb / "manifest.json").exists():
        return emb
    run_dir, export = out / "pretrain" / tag, out / "export" / tag
    run_pretrain(["pretrain/tiny-cpu"], {
        "seed_everything": seed, "model.seed": seed, "data.data": str(pretrain_data), "run_dir": str(run_dir),
        "trainer.max_steps": steps, "model.contrastive.margin_warmup_steps": max(1, steps // 4),
        "trainer.enable_progress_bar": False, "ckpt_path": "last", **VARIANTS[name][1]})  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    export_model(load_model(last), export, overwrite=True, source=last)
    run_embed(EmbedConfig(model=str(export), data=str(data), out=str(emb), batch_size=128))
    return emb


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-data", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default="base")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--evaluate-only", action="store_true")
    a = p.parse_args(argv)
    from qanchor_pl.config import EvaluateConfig
    from qanchor_pl.eval.evaluate import run_evaluate

    out = Path(a.out)
    names = [v for v in a.variants.split(",") if v]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = {}
    for seed in seeds:
        for name in names:
            folder = out / "embed" / f"{name}-s{seed}"
            if not a.evaluate_only:
                run_variant(Path(a.pretrain_data), Path(a.data), out, name, seed, a.steps)
            if (folder / "manifest.json").exists():
                rows[f"{name}-s{seed}"] = str(folder)
    compare = [(r, b) for r in rows for b in ("mean-events", "category-counts")]
    compare += [(f"{n}-s{s}", f"base-s{s}") for s in seeds for n in names if n != "base" and f"{n}-s{s}" in rows and f"base-s{s}" in rows]  # fmt: skip
    result = run_evaluate(EvaluateConfig(
        embeddings=list(rows.values()), names=list(rows), data=a.data, out=str(out / "validation"),
        baselines="mean-events,category-counts", compare=compare, probe_c="cv", split="validation",
        complement="category-counts"))  # fmt: skip
    print(json.dumps(result["rows"], indent=1))


if __name__ == "__main__":
    main()
