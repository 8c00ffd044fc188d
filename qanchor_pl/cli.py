"""``qanchor``: one front door. Every command is one typed config and one function.

One jsonargparse parser family: each command takes ``--config FILE`` (several, applied in order),
``--print_config``, dotted overrides and shows its defaults in ``--help``. ``pretrain`` and ``tune``
are LightningCLI (jsonargparse too) behind the same door. Global flags, anywhere on the line:
``-v`` (log at INFO and show tracebacks), ``--json`` (machines: stdout's JSON line and nothing on
stderr but warnings). Option names take ``-`` or ``_`` (``--batch-size`` = ``--batch_size``).
A recipe name such as ``pretrain/tiny-cpu`` after ``--config`` is found in the package's recipes.

A user mistake (bad data, unknown scenario, bad option value, missing checkpoint) ends with one
line, ``error: WHAT``, and exit code 2; ``-v`` shows the traceback. The result is one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_modules.util.lock import FolderLockedError
from qanchor_pl.recipes import resolve_config_args


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``qanchor`` command: its typed config, the function that runs it and its help line."""

    config: str  # "module:Class"
    run: str  # "module:function", called with one config object, returning a JSON-able dict
    help: str


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "synth": Command("data_modules.synth.world:SynthConfig", "data_modules.synth.world:run_synth",
                     "write a synthetic raw data set (events, users, scenarios, labels)"),
    "build": Command("data_modules.builder.runner:BuildConfig", "qanchor_pl.cli:_build",
                     "raw logs -> UserU shards, vocabularies, benchmarks, manifest"),
    "encode": Command("data_modules.encode.dataset:EncodeConfig", "data_modules.encode.dataset:run_encode",
                      "one vector per distinct event text (resumable)"),
    "qa-synth": Command("data_modules.supervision.qa_synth:QASynthConfig", "data_modules.supervision.qa_synth:run_qa_synth",
                        "LLM-written D_uqa for a built data set (resumable; ranks share the users)"),
    "embed": Command("qanchor_pl.config:EmbedConfig", "qanchor_pl.serve.embed:run_embed",
                     "every user's embedding for every scenario (prefix KV cache)"),
    "evaluate": Command("qanchor_pl.config:EvaluateConfig", "qanchor_pl.eval.evaluate:run_evaluate",
                        "linear probe per scenario: AUC, KS, report table, TensorBoard"),
    "diagnose": Command("qanchor_pl.config:DiagnoseConfig", "qanchor_pl.eval.diagnose:run_diagnose",
                        "validation AUC of a linear probe at every stage of the model"),
    "experiment": Command("qanchor_pl.pipelines.experiment_config:ExperimentConfig",
                          "qanchor_pl.pipelines.experiment:run_experiment",
                          "the whole experiment on your raw logs: build ... evaluate, report"),
    "demo": Command("qanchor_pl.pipelines.demo:DemoConfig", "qanchor_pl.pipelines.demo:run_demo",
                    "the whole pipeline on the synthetic world, ending in the result tables"),
    "export": Command("qanchor_pl.config:ExportConfig", "qanchor_pl.cli:_export",
                      "checkpoint -> folder usable without Lightning (adapter, safetensors, card)"),
    "make-backbone": Command("qanchor_pl.config:MakeBackboneConfig", "qanchor_pl.cli:_make_backbone",
                             "a random-weight LM with a published shape (offline speed checks)"),
}  # fmt: skip
BENCH: dict[str, Command] = {
    "data": Command("data_modules.loading.bench:BenchDataConfig", "data_modules.loading.bench:bench_data",
                    "samples/s and peak memory of the streaming loader"),
    "build": Command("data_modules.builder.bench:BenchBuildConfig", "data_modules.builder.bench:bench_build",
                     "users/s per task and peak memory of a partitioned build (1, 2, 4 tasks)"),
    "train": Command("qanchor_pl.config:BenchTrainConfig", "qanchor_pl.bench.train:bench_train",
                     "training step: Lightning against a plain PyTorch loop, alternated blocks"),
    "kv-cache": Command("qanchor_pl.config:BenchKVConfig", "qanchor_pl.cli:_bench_kv",
                        "multi-scenario embedding with against without the prefix KV cache"),
    "qa-synth": Command("qanchor_pl.config:BenchQASynthConfig", "qanchor_pl.cli:_bench_qa_synth",
                        "LLM answer generation: users/s and generated tokens/s"),
    "gpu": Command("qanchor_pl.config:BenchGPUConfig", "qanchor_pl.bench.gpu:bench_gpu",
                   "the prepared GPU check: train, kv-cache, qa-synth, pytest -m gpu in one JSON (make gpu-check)"),
}  # fmt: skip
ANALYZE: dict[str, Command] = {
    "attention": Command("qanchor_pl.config:AttentionConfig", "qanchor_pl.eval.attention:run_attention",
                         "which inputs each scenario's embedding attends to, base and prompt-tuned (Fig. 7)"),
}  # fmt: skip
#: Commands with sub-commands: ``qanchor bench data``, ``qanchor analyze attention``.
GROUPS: dict[str, tuple[dict[str, Command], str]] = {
    "bench": (BENCH, "benchmarks: data, build, train, kv-cache, qa-synth, gpu (JSON)"),
    "analyze": (ANALYZE, "analyses of a trained model: attention"),
}
# LightningCLI commands: parsed by QAnchorCLI (same jsonargparse family), listed here for --help.
LIGHTNING: dict[str, tuple[str, str]] = {
    "pretrain": (
        "run_pretrain_cli",
        "pretraining (LightningCLI: model, data, trainer; DDP, DeepSpeed, SLURM)",
    ),
    "tune": ("run_tune_cli", "prompt tuning per scenario, backbone frozen (LightningCLI; --all_scenarios)"),
}


LIGHTNING_FLAGS = {"tune": {"--all_scenarios"}}  # their boolean options that may stand alone


# -- the few commands whose function is not already config-shaped --------------------------------
def _build(cfg: Any) -> dict:
    from data_modules.builder.runner import build

    m = build(cfg)
    if isinstance(m, dict):  # one stage of a partitioned build
        return m
    return {"out": cfg.out, "counts": m.counts, "skipped": m.skipped, "cutoff": m.cutoff, "qa": m.qa}


def _export(cfg: Any) -> dict:
    from qanchor_pl.serve.export import export_checkpoint

    return export_checkpoint(cfg.ckpt, cfg.out, overwrite=cfg.overwrite)


def _make_backbone(cfg: Any) -> dict:
    from qanchor_pl.model.backbone import write_shaped_backbone

    return write_shaped_backbone(cfg.shape, cfg.tokenizer, cfg.out, seed=cfg.seed)


def _bench_kv(cfg: Any) -> dict:
    from qanchor_pl.bench.kv_cache import bench_kv_cache

    return bench_kv_cache(**dataclasses.asdict(cfg))


def _bench_qa_synth(cfg: Any) -> dict:
    from qanchor_pl.bench.qa_synth import bench_qa_synth

    return bench_qa_synth(**dataclasses.asdict(cfg))


# -- parsing ---------------------------------------------------------------------------------------
def _command_parser(command: Command):
    from jsonargparse import ArgumentParser

    cls = _load(command.config)
    parser = ArgumentParser(description=command.help, exit_on_error=False)
    parser.add_argument("--config", action="config", help="a YAML recipe of these options; repeatable")
    parser.add_class_arguments(cls, None, fail_untyped=True, sub_configs=True, skip={"timings"})  # an output
    return parser


def build_parser():
    """The whole ``qanchor`` parser (every command, its options and their help)."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    top = ArgumentParser(
        prog="qanchor", exit_on_error=False,
        description="Query-as-Anchor user embeddings. Global flags: -v (INFO logs, tracebacks), "
        "--json (only the JSON result line). `qanchor COMMAND --help` shows a command's options.",
    )  # fmt: skip
    sub = top.add_subcommands(dest="command")
    for name, command in COMMANDS.items():
        sub.add_subcommand(name, _command_parser(command), help=command.help)
    for group, (table, help_line) in GROUPS.items():
        parser = ArgumentParser(description=help_line, exit_on_error=False)
        sub.add_subcommand(group, parser, help=help_line)
        group_sub = parser.add_subcommands(dest="what")
        for name, command in table.items():
            group_sub.add_subcommand(name, _command_parser(command), help=command.help)
    for name, (_, help_line) in LIGHTNING.items():
        sub.add_subcommand(name, ArgumentParser(description=help_line), help=help_line)
    return top


def normalise_option_names(argv: list[str]) -> list[str]:
    """``--batch-size 3`` -> ``--batch_size 3`` (the key only, never a value)."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            key, eq, value = token[2:].partition("=")
            token = "--" + key.replace("-", "_") + eq + value
        out.append(token)
    return out


def bare_flags_to_true(argv: list[str]) -> list[str]:
    """``--fast`` alone -> ``--fast true`` for the command's boolean options (jsonargparse wants a value)."""
    words = [a for a in argv if not a.startswith("-")][:2]
    table, name = (
        (GROUPS[words[0]][0], words[1])
        if words[:1] and words[0] in GROUPS and len(words) > 1
        else (COMMANDS, words[0] if words else "")
    )
    if name in LIGHTNING_FLAGS:
        flags = LIGHTNING_FLAGS[name]
    elif name in table:
        flags = {
            f"--{f.name}" for f in dataclasses.fields(_load(table[name].config)) if f.type in ("bool", bool)
        }
    else:
        return argv
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token in flags and (following is None or following.startswith("-")):
            out.append("true")
    return out


def _split_global_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    verbose = any(a in ("-v", "--verbose") for a in argv)
    machine = "--json" in argv
    return [a for a in argv if a not in ("-v", "--verbose", "--json")], verbose, machine


@contextlib.contextmanager
def quiet_unless(verbose: bool) -> Iterator[None]:
    """Quiet by default: no INFO records (Lightning resets its loggers' levels on import, so levels
    alone do not hold) and no library warnings; ``-v`` shows both. Undone on exit (in-process use)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)  # fmt: skip
    if verbose:
        yield
        return
    import warnings

    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        logging.disable(logging.NOTSET)


class UsageError(Exception):
    """A user mistake the CLI reports as one line with exit code 2."""


# argparse.ArgumentError: what jsonargparse raises for a bad option or value
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ValueError,
    OSError,
    KeyError,
    argparse.ArgumentError,
    FolderLockedError,
)


_LINK_FAILED = re.compile(r"^Call to compute_fn of link .*? failed: ", re.S)


def _one_line(err: BaseException) -> str:
    text = str(err) if not isinstance(err, KeyError) else f"unknown name {err}"
    text = _LINK_FAILED.sub("", text)  # jsonargparse's wrapper around an error raised by a link
    if "Original Traceback" in text:  # raised in a DataLoader worker: its own last line, unwrapped
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__


def parse(argv: list[str]) -> tuple[Command, Any] | None:
    """(command, its config object) for ``argv``; None for the LightningCLI commands."""
    if argv and argv[0] in LIGHTNING:
        return None
    cfg = build_parser().parse_args(argv)
    command, table, sub = cfg.command, COMMANDS, cfg[cfg.command] if cfg.command else None
    if command in GROUPS:
        command, table, sub = sub.what, GROUPS[command][0], sub[sub.what] if sub.what else None
    if command is None:
        raise UsageError("no command given: see `qanchor --help`")
    spec = table[command]
    cls = _load(spec.config)
    fields = {f.name for f in dataclasses.fields(cls)}
    return spec, cls(**{k: v for k, v in sub.as_dict().items() if k in fields})


def _quiet_deepspeed_logger(argv: list[str]) -> None:
    """DeepSpeed's logger writes to the stdout it finds at import: import it while stdout points
    at stderr, so ``--print_config`` of a DeepSpeed recipe prints nothing but the config."""
    texts = [a for a in argv if "deepspeed" in a.lower()]
    texts += [Path(b).read_text() for a, b in zip(argv, argv[1:]) if a == "--config" and Path(b).is_file()]
    if any("deepspeed" in t.lower() for t in texts):
        with contextlib.redirect_stdout(sys.stderr), contextlib.suppress(ImportError):
            importlib.import_module("deepspeed")


def _run_lightning(argv: list[str]) -> None:
    from qanchor_pl.train import lightning_cli

    getattr(lightning_cli, LIGHTNING[argv[0]][0])(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, verbose, machine = _split_global_flags(normalise_option_names(argv))
    quiet_before = os.environ.get("QANCHOR_QUIET")
    if machine:
        os.environ["QANCHOR_QUIET"] = "1"  # the pipelines' stage lines (status()); child ranks inherit it
    try:
        with quiet_unless(verbose):
            return _main(argv, verbose)
    finally:  # main() called in-process (tests, notebooks) leaves the environment as it was
        if quiet_before is None:
            os.environ.pop("QANCHOR_QUIET", None)
        else:
            os.environ["QANCHOR_QUIET"] = quiet_before


def _main(argv: list[str], verbose: bool) -> int:
    t0 = time.perf_counter()
    asks_for_text = any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv)
    try:
        argv = bare_flags_to_true(resolve_config_args(argv))
        parsed = parse(argv)  # --help and --print_config print to stdout and exit here
        if parsed is None and asks_for_text:
            _quiet_deepspeed_logger(argv)
        # stdout carries only the JSON result; libraries that print (DeepSpeed's logger) go to stderr
        with contextlib.redirect_stdout(sys.stdout if asks_for_text else sys.stderr):
            if parsed is None:
                _run_lightning(argv)
                return 0  # LightningCLI commands print their own summary line
            spec, config = parsed
            result = _load(spec.run)(config)
    except USER_ERRORS as err:
        return _fail(err, verbose)
    if isinstance(result, dict):
        result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    print(json.dumps(result, default=str))
    return 0


def _fail(err: BaseException, verbose: bool) -> int:
    if verbose:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    print(f"error: {_one_line(err)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
