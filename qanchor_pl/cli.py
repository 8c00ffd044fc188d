"""``qanchor``: one command, one subcommand per job. It wires arguments to functions, nothing more."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from data_modules.errors import DataError


def _synth(args: argparse.Namespace) -> dict:
    from data_modules.synth import write_world

    return write_world(
        args.out, args.users, args.seed, activity=args.activity, n_files=args.files, lead_days=args.lead_days,
        world=args.world,
    )  # fmt: skip


def _build(args: argparse.Namespace) -> dict:
    from data_modules.build import BuildConfig, build
    from data_modules.schemas import parse_caps

    cfg = BuildConfig(
        raw=args.raw,
        out=args.out,
        events=args.events,
        users=args.users,
        scenarios=args.scenarios,
        labels=args.labels,
        qa=args.qa,
        topics=args.topics,
        modalities_meta=args.modalities_meta,
        modalities=tuple(args.modalities.split(",")) if args.modalities else None,
        timezone=args.timezone,
        topic_categories=args.topic_categories,
        cutoff=args.cutoff,
        history_days=args.history_days,
        future_days=args.future_days,
        max_events=parse_caps(args.max_events),
        users_per_shard=args.users_per_shard,
        row_group_size=args.row_group_size,
        topics_per_user=args.topics_per_user,
        external_qa=args.external_qa,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        tokenizer_vocab=args.tokenizer_vocab,
    )
    m = build(cfg)
    return {"out": args.out, "counts": m.counts, "skipped": m.skipped, "cutoff": m.cutoff, "qa": m.qa}


def _encode(args: argparse.Namespace) -> dict:
    from data_modules.encode import encode_dataset

    return encode_dataset(
        args.data,
        args.encoder,
        batch_size=args.batch_size,
        dim=args.dim,
        pooling=args.pooling,
        device=args.device,
    )


def _bench_data(args: argparse.Namespace) -> dict:
    from data_modules.bench import bench_data

    return bench_data(
        args.data,
        workers=args.workers,
        batch_size=args.batch_size,
        batches=args.batches,
        max_events=args.max_events,
        tokenizer=args.tokenizer,
    )


def _export(args: argparse.Namespace) -> dict:
    from qanchor_pl.model.export import export_model
    from qanchor_pl.pretrain import PretrainModule

    module = PretrainModule.load_from_checkpoint(args.ckpt, map_location="cpu", strict=False)
    return export_model(module.model, args.out, overwrite=args.overwrite)


def _bench_train(args: argparse.Namespace) -> dict:
    from qanchor_pl.bench_train import bench_train

    return bench_train(["--config", args.config, *args.overrides], steps=args.steps, warmup=args.warmup)


def _make_backbone(args: argparse.Namespace) -> dict:
    from qanchor_pl.model.backbone import write_shaped_backbone

    return write_shaped_backbone(args.shape, args.tokenizer, args.out, seed=args.seed)


def _embed(args: argparse.Namespace) -> dict:
    from qanchor_pl.embed import run_embed

    return run_embed(
        model=args.model,
        data=args.data,
        scenarios=args.scenarios,
        out=args.out,
        prompts=args.prompts,
        kv_cache=not args.no_kv_cache,
        batch_size=args.batch_size,
        part_batches=args.part_batches,
        devices=args.devices,
        accelerator=args.accelerator,
        num_workers=args.workers,
    )


def _evaluate(args: argparse.Namespace) -> dict:
    from qanchor_pl.evaluate import run_evaluate

    baselines = () if args.baselines == "none" else tuple(b for b in args.baselines.split(",") if b)
    return run_evaluate(
        embeddings=args.embeddings,
        names=args.names.split(",") if args.names else None,
        data=args.data,
        out=args.out,
        baselines=baselines,
        scenarios=args.scenarios,
        profile_tokens=args.profile_tokens,
        compare=[tuple(pair) for pair in args.compare or []],
        probe_c=args.probe_c if args.probe_c == "cv" else float(args.probe_c),
        split=args.split,
        val_seed=args.val_seed,
    )


def _bench_kv(args: argparse.Namespace) -> dict:
    from qanchor_pl.bench_kv import bench_kv_cache

    return bench_kv_cache(
        users=args.users, scenarios=args.scenarios, query_len=args.query_len, hidden=args.hidden,
        layers=args.layers, intermediate=args.intermediate, repeats=args.repeats,
    )  # fmt: skip


def _demo(args: argparse.Namespace) -> dict:
    from qanchor_pl.demo import DemoConfig, run_demo

    overrides = {k: getattr(args, k)
                 for k in ("users", "pretrain_steps", "tune_steps", "seed", "world", "variants", "probe_c", "seeds", "baselines")}  # fmt: skip
    return run_demo(DemoConfig.from_options(args.out, fast=args.fast, **overrides))


def _optional(kind: type):
    """A converter that also takes ``null``/``none`` (the recipe's or the default's value: unset)."""

    def convert(text: str):
        return None if text.lower() in ("null", "none") else kind(text)

    convert.__name__ = f"{kind.__name__} or null"
    return convert


_TYPES = {"str": str, "int": int, "float": float, "str | None": _optional(str), "int | None": _optional(int),
          "float | None": _optional(float)}  # fmt: skip


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = (), skip: tuple[str, ...] = ()
) -> None:
    """One ``--option`` per field of a config dataclass (its default and type)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name in required:
            parser.add_argument(flag, type=_TYPES[f.type], default=None, help="required")
        else:
            parser.add_argument(flag, type=_TYPES[f.type], default=f.default, help=f"default: {f.default}")


def dataclass_from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _diagnose(args: argparse.Namespace) -> dict:
    from qanchor_pl.diagnose import run_diagnose

    return run_diagnose(
        model=args.model, data=args.data, out=args.out, prompts=args.prompts, scenarios=args.scenarios,
        batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
        probe_c=args.probe_c if args.probe_c == "cv" else float(args.probe_c),
    )  # fmt: skip


def _experiment(args: argparse.Namespace) -> dict:
    from qanchor_pl.pipelines.experiment import ExperimentConfig, run_experiment

    return run_experiment(dataclass_from_args(ExperimentConfig, args))


def _qa_synth(args: argparse.Namespace) -> dict:
    from data_modules.qa_synth import QASynthConfig, run_qa_synth

    return run_qa_synth(dataclass_from_args(QASynthConfig, args))


def _bench_qa_synth(args: argparse.Namespace) -> dict:
    from qanchor_pl.bench_qa_synth import bench_qa_synth

    return bench_qa_synth(data=args.data, model=args.model, users=args.users, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, device=args.device)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qanchor", description="Query-as-Anchor user embeddings pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic Alipay-like raw data set")
    s.add_argument("--out", required=True)
    s.add_argument("--users", type=int, default=4000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--activity", type=float, default=1.0, help="scale every event rate (4 fills the paper's caps)"
    )
    s.add_argument("--files", type=int, default=4, help="number of events parquet files")
    s.add_argument(
        "--lead-days", type=int, default=0,
        help="extra days of past behaviour before the 90-day history (room for a pretraining cutoff)",
    )  # fmt: skip
    s.add_argument(
        "--world", choices=["default", "dynamic"], default="default",
        help="dynamic: trending rates, triggered events, long-tailed texts (see data_modules/synth_dynamic.py)",
    )  # fmt: skip
    s.set_defaults(func=_synth)

    b = sub.add_parser("build", help="raw logs -> UserU shards, vocabularies, benchmarks, manifest")
    b.add_argument(
        "--raw", help="folder with events/, users.parquet, scenarios.json [, labels.parquet, qa.parquet]"
    )
    b.add_argument("--out", required=True)
    for name in ("events", "users", "scenarios", "labels", "qa", "topics", "modalities-meta"):
        b.add_argument(f"--{name}", help=f"path of the {name} input (overrides --raw)")
    b.add_argument(
        "--modalities",
        help="comma-separated modalities to use, 'tabular' for the users table "
        "(default: modalities.json's, else every modality in the events, + tabular)",
    )
    b.add_argument("--timezone", default="UTC", help="IANA time zone of calendar facts and a naive --cutoff")
    b.add_argument(
        "--topic-categories", type=int, default=8, help="derived topic pool: category topics per modality"
    )
    b.add_argument(
        "--cutoff", help="ISO time splitting history from future (default: last day - future window)"
    )
    b.add_argument("--history-days", type=int, default=90)
    b.add_argument("--future-days", type=int, default=30)
    b.add_argument("--max-events", help="per-modality caps, e.g. bill=250,mini=150 or 'paper'")
    b.add_argument("--users-per-shard", type=int, default=1024)
    b.add_argument("--row-group-size", type=int, default=256)
    b.add_argument("--topics-per-user", type=int, default=10)
    b.add_argument("--external-qa", choices=["add", "replace"], default="add")
    b.add_argument("--test-fraction", type=float, default=0.3)
    b.add_argument("--split-seed", type=int, default=0)
    b.add_argument("--tokenizer-vocab", type=int, default=4096)
    b.set_defaults(func=_build)

    e = sub.add_parser("encode", help="one vector per distinct event text (resumable)")
    e.add_argument("--data", required=True)
    e.add_argument("--encoder", default="hash", help="hash | minilm | PATH to a Hugging Face encoder folder")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--dim", type=int, default=64, help="output size of the hash encoder")
    e.add_argument(
        "--pooling", choices=["mean", "cls"], default=None, help="default: mean for minilm, cls for PATH"
    )
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_encode)

    x = sub.add_parser(
        "export", help="checkpoint -> folder usable without Lightning (peft adapter, safetensors)"
    )
    x.add_argument("--ckpt", required=True, help="a pretraining checkpoint (e.g. RUN/checkpoints/last.ckpt)")
    x.add_argument("--out", required=True)
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=_export)

    em = sub.add_parser("embed", help="every user's embedding for every scenario (prefix KV cache)")
    em.add_argument("--config", help="a YAML recipe whose keys are these options (command line wins)")
    em.add_argument("--model", help="an export folder or a pretraining checkpoint (required)")
    em.add_argument("--data", help="a built data set (required)")
    em.add_argument("--scenarios", default="all", help="'all' or a comma-separated list")
    em.add_argument("--prompts", help="folder of tuned prompts (<DIR>/<scenario>/prompt/, from qanchor tune)")
    em.add_argument("--out", help="output folder (required)")
    em.add_argument("--no-kv-cache", action="store_true", help="run each (user, scenario) in full")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--part-batches", type=int, default=16, help="batches per output part")
    em.add_argument("--devices", type=int, default=1, help="processes (DDP predict), one part set each")
    em.add_argument("--accelerator", default="auto")
    em.add_argument("--workers", type=int, default=0)
    em.set_defaults(func=_embed, required_options=("model", "data", "out"))
    RECIPE_PARSERS["embed"] = em

    ev = sub.add_parser("evaluate", help="linear probe per scenario: AUC, KS, report table, TensorBoard")
    ev.add_argument("--embeddings", nargs="*", default=[], help="qanchor embed output folders (one row each)")
    ev.add_argument("--names", help="comma-separated row names for --embeddings (default: folder names)")
    ev.add_argument("--data", required=True)
    ev.add_argument("--out", required=True, help="report folder")
    ev.add_argument(
        "--baselines", default="minilm,mean-events,event-counts",
        help="comma-separated from minilm, mean-events, event-counts; or 'none'",
    )  # fmt: skip
    ev.add_argument("--scenarios", default="all")
    ev.add_argument("--profile-tokens", type=int, default=256, help="MiniLM token cap on the profile text")
    ev.add_argument(
        "--probe-c", default="1.0",
        help="the probe's C: a number, or 'cv' (3-fold cross-validation on train, per row and scenario)",
    )  # fmt: skip
    ev.add_argument(
        "--compare", nargs=2, action="append", metavar=("A", "B"),
        help="rows A and B: paired-bootstrap 95%% interval of Avg AUC(A) - AUC(B); repeatable",
    )  # fmt: skip
    ev.add_argument(
        "--split", choices=["test", "validation"], default="test",
        help="test: fit on train, score on test; validation: fit and score inside train (the tuning carve)",
    )  # fmt: skip
    ev.add_argument(
        "--val-seed", type=int, default=0, help="the validation carve's seed (as the tuning data's)"
    )
    ev.set_defaults(func=_evaluate)

    qs = sub.add_parser(
        "qa-synth",
        help="LLM-written D_uqa for a built data set (resumable parts; torchrun/srun ranks share the users)",
    )
    qs.add_argument("--config", help="a YAML recipe whose keys are these options (command line wins)")
    from data_modules.qa_synth import QASynthConfig

    add_dataclass_options(qs, QASynthConfig, required=("data",))
    qs.set_defaults(func=_qa_synth, required_options=("data",))
    RECIPE_PARSERS["qa-synth"] = qs

    ex = sub.add_parser(
        "experiment",
        help="the whole experiment on your raw logs: split, build, encode, pretrain, tune, embed, evaluate",
    )
    ex.add_argument("--config", help="a YAML recipe whose keys are these options (command line wins)")
    from qanchor_pl.pipelines.experiment import ExperimentConfig

    add_dataclass_options(ex, ExperimentConfig, required=("raw",), skip=("timings",))
    ex.set_defaults(func=_experiment, required_options=("raw",))
    RECIPE_PARSERS["experiment"] = ex

    dg = sub.add_parser("diagnose", help="validation AUC of a linear probe at every stage of the model")
    dg.add_argument("--model", required=True, help="an export folder or a pretraining checkpoint")
    dg.add_argument("--data", required=True)
    dg.add_argument("--out", required=True, help="report folder (diagnose.md, diagnose.json, tensorboard/)")
    dg.add_argument("--prompts", help="tuned prompts folder: adds the prompt-tuned u stage")
    dg.add_argument("--scenarios", default="all")
    dg.add_argument("--batch-size", type=int, default=128)
    dg.add_argument("--val-fraction", type=float, default=0.2, help="of each scenario's train users")
    dg.add_argument("--seed", type=int, default=0, help="the validation carve's seed (as the tuning data's)")
    dg.add_argument(
        "--probe-c", default="cv", help="the probe's C, or 'cv' (cross-validated on the fit part)"
    )
    dg.set_defaults(func=_diagnose)

    dm = sub.add_parser("demo", help="the whole pipeline on the synthetic world, ending in the result tables")
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--fast", action="store_true", help="a small, ~3-minute version (used by a test)")
    dm.add_argument("--users", type=int, help="override the number of synthetic users (default 4000)")
    dm.add_argument("--pretrain-steps", type=int, help="override the steps of each pretraining run (200)")
    dm.add_argument("--tune-steps", type=int, help="override the steps of each prompt-tuning run (70)")
    dm.add_argument("--seed", type=int, help="override the world's and the runs' seed (0)")
    dm.add_argument("--world", choices=["default", "dynamic"], help="the synthetic world (default: default)")
    dm.add_argument(
        "--variants",
        help="pretraining variants, comma-separated, base required (default: base; e.g. "
        "base,no-contrastive,no-ntp,no-margin,no-structural,event-time,event-counts,time-counts,no-head)",
    )
    dm.add_argument("--probe-c", help="the probe's C, or 'cv' (default: cross-validated on train)")
    dm.add_argument(
        "--baselines",
        help="comma-separated (default: minilm,mean-events,category-counts,event-counts, "
        "plus time-windows on the dynamic world)",
    )
    dm.add_argument(
        "--seeds", type=int, help="run N seeds on the same world: OUT/seed-S + OUT/seeds.md (mean ± s.d.)"
    )
    dm.set_defaults(func=_demo)

    mb = sub.add_parser(
        "make-backbone", help="a random-weight LM with a published shape (speed/memory checks offline)"
    )
    mb.add_argument("--shape", default="qwen2.5-0.5b", help="qwen2.5-0.5b | qwen2.5-1.5b | qwen2.5-3b | tiny")
    mb.add_argument(
        "--tokenizer", required=True, help="a data set folder or tokenizer folder to ship with it"
    )
    mb.add_argument("--out", required=True)
    mb.add_argument("--seed", type=int, default=0)
    mb.set_defaults(func=_make_backbone)

    bench = sub.add_parser("bench", help="benchmarks (JSON output)")
    bsub = bench.add_subparsers(dest="what", required=True)
    bd = bsub.add_parser("data", help="samples/s and peak memory of the streaming loader")
    bd.add_argument("--data", required=True)
    bd.add_argument("--workers", type=int, default=0)
    bd.add_argument("--batch-size", type=int, default=32)
    bd.add_argument("--batches", type=int, default=0, help="0 = one full epoch")
    bd.add_argument("--max-events", help="loader-side caps (<= the build's), e.g. 'paper'")
    bd.add_argument("--tokenizer", default=None, help="default: the data set's own tokenizer")
    bd.add_argument(
        "--json", action="store_true", help="print one JSON object (always JSON; kept for scripts)"
    )
    bd.set_defaults(func=_bench_data)
    bt = bsub.add_parser(
        "train",
        help="training step under Lightning vs a plain PyTorch loop",
        description="Any further --key value arguments override the recipe, as for `qanchor pretrain`.",
    )
    bt.add_argument("--config", required=True, help="a pretraining recipe")
    bt.add_argument("--steps", type=int, default=30, help="timed steps")
    bt.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    bt.add_argument("--json", action="store_true", help="print one JSON object (always JSON)")
    bt.set_defaults(func=_bench_train, overrides=[])
    bk = bsub.add_parser("kv-cache", help="multi-scenario embedding with vs without the prefix KV cache")
    bk.add_argument("--users", type=int, default=8)
    bk.add_argument("--scenarios", type=int, default=10)
    bk.add_argument("--query-len", type=int, default=20)
    bk.add_argument("--hidden", type=int, default=256)
    bk.add_argument("--layers", type=int, default=4)
    bk.add_argument("--intermediate", type=int, default=1408)
    bk.add_argument("--repeats", type=int, default=3)
    bk.add_argument("--json", action="store_true", help="print one JSON object (always JSON)")
    bk.set_defaults(func=_bench_kv)
    bq = bsub.add_parser("qa-synth", help="LLM answer generation: users/s and generated tokens/s")
    bq.add_argument(
        "--data", help="a built data set (default: a small synthetic one, built in a temp folder)"
    )
    bq.add_argument("--model", help="a causal LM folder (default: a tiny random Qwen2 made here)")
    bq.add_argument("--users", type=int, default=32)
    bq.add_argument("--batch-size", type=int, default=16)
    bq.add_argument("--max-new-tokens", type=int, default=64)
    bq.add_argument("--device", default="auto")
    bq.add_argument("--json", action="store_true", help="print one JSON object (always JSON)")
    bq.set_defaults(func=_bench_qa_synth)
    return p


RECIPE_PARSERS: dict[str, argparse.ArgumentParser] = {}  # subcommands that accept --config YAML


def apply_recipe(parser: argparse.ArgumentParser, path: str) -> None:
    """Use a YAML recipe's keys (option names, '-' or '_') as the subcommand's defaults."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    known = {a.dest for a in parser._actions}
    dests = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(dests) - known)
    if unknown:
        raise SystemExit(
            f"error: {path}: unknown keys {unknown}; expected some of {sorted(known - {'help', 'config'})}"
        )
    parser.set_defaults(**dests)


LIGHTNING_COMMANDS = {"pretrain": "run_pretrain", "tune": "run_tune"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:  # LightningCLI parses its own arguments
        from qanchor_pl import lightning_cli

        getattr(lightning_cli, LIGHTNING_COMMANDS[argv[0]])(argv[1:])
        return 0
    parser = _parser()
    if argv and argv[0] in RECIPE_PARSERS and "--config" in argv:
        apply_recipe(RECIPE_PARSERS[argv[0]], argv[argv.index("--config") + 1])
    args, unknown = parser.parse_known_args(argv)
    missing = [o for o in getattr(args, "required_options", ()) if getattr(args, o, None) in (None, "")]
    if missing:
        parser.error(f"{args.command}: missing " + ", ".join(f"--{o.replace('_', '-')}" for o in missing))
    if unknown:
        if getattr(args, "func", None) is not _bench_train:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = unknown
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    t0 = time.perf_counter()
    try:
        # stdout carries only the JSON result; libraries that print (DeepSpeed's logger) go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(result, dict) and args.command != "bench":
        result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    print(json.dumps(result, indent=None if args.command == "bench" else 2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
