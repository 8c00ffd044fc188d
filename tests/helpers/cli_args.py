"""Argument lists for the real `qanchor` commands, sized for the small test data set."""

from __future__ import annotations

RECIPE = "pretrain/tiny-cpu"  # a shipped recipe, found from any working directory
TUNE = "tune/tiny-cpu"
SMALL = ["--data.batch_size", "16", "--data.buffer_size", "64", "--trainer.log_every_n_steps", "1",
         "--throughput.window", "2", "--trainer.enable_progress_bar", "false",
         "--model.arch.tiny.hidden_size", "64", "--model.arch.tiny.intermediate_size", "128", "--model.arch.head_hidden", "64",
         "--model.warmup_steps", "2", "--data.max_answer_tokens", "32"]  # fmt: skip
LORA = ["--model.arch.lora.r", "4", "--model.arch.lora.alpha", "8", "--model.arch.lora.dropout", "0.1"]


def pretrain_args(data, run_dir, steps, *extra) -> list[str]:
    return ["pretrain", "--config", RECIPE, "--data.data", str(data), "--run_dir", str(run_dir),
            "--trainer.max_steps", str(steps), *SMALL, *extra]  # fmt: skip


def tune_args(data, pretrained, run_dir, steps, *extra) -> list[str]:
    return ["tune", "--config", TUNE, "--model.pretrained", str(pretrained), "--data.data", str(data),
            "--run_dir", str(run_dir), "--trainer.max_steps", str(steps), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.val_check_interval", "5",
            "--data.batch_size", "16", "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
