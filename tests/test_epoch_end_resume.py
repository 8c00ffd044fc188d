"""Resuming at an epoch's end is exact: the pre-emption checkpoint saved after an epoch's last batch,
and the ``last.ckpt`` of a run that stopped there, go on with the next epoch as the uninterrupted
run does (same users at every step, same losses, same weights), not with the epoch after it.

Real Trainer runs of the real CLI, in this process so that a callback can raise SIGUSR1 at a
chosen batch (what ``scancel --signal=USR1`` does under SLURM, without the timing)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.epoch_end_resume import clear_finished_epoch_batches
from data_modules.loading.datamodule import UserStreamLoader, UserUDataModule
from qanchor_pl.train.lightning_cli import build_pretrain_cli
from tests.conftest import ROOT
from tests.helpers.cli_args import pretrain_args
from tests.helpers.tb import scalars

BATCH = 64  # 300 users: 5 steps per epoch
STEPS = 8


class SignalAtStep(L.Callback):
    """Send this process SIGUSR1 as step ``step`` (0-based) starts. (Not ``batch_idx``: with a
    ``dataloader_iter`` training step, Lightning passes the hooks 0 twice.)"""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def as_slurm_batch_job(monkeypatch):
    """The environment of a SLURM batch job (SlurmPreemption acts only there); the SIGUSR1 handler
    it installs is put back afterwards."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "qanchor-pretrain")
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def fit(data: Path, run: Path, steps: int, *extra: str, callbacks: list | None = None) -> None:
    args = pretrain_args(data, run, steps, "--data.batch_size", str(BATCH), "--sample_audit.ids", "true",
                         "--preemption.requeue", "false", *extra)[1:]  # fmt: skip
    args[args.index("--config") + 1] = str(ROOT / "recipes" / "pretrain" / "tiny-cpu.yaml")
    build_pretrain_cli(args, extra_callbacks=callbacks or []).fit()


def users_by_step(run: Path) -> list[list[str]]:
    rows = [json.loads(line) for line in (run / "samples-rank0.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(len(rows))), "a step lost or repeated"
    return [row["users"] for row in rows]


def final(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(built, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("plain") / "run"
    fit(built, run, STEPS)
    return run


def steps_per_epoch(built) -> int:
    dm = UserUDataModule(str(built), batch_size=BATCH)
    dm.setup("fit")
    return len(dm.train_dataloader())


def test_a_pre_emption_after_an_epochs_last_batch_resumes_with_the_next_epoch(
    built, uninterrupted, tmp_path, as_slurm_batch_job
):
    last_batch = steps_per_epoch(built) - 1
    assert STEPS > last_batch + 2
    run = tmp_path / "run"
    fit(built, run, STEPS, "--checkpoint.every_n_train_steps", "1000", callbacks=[SignalAtStep(last_batch)])
    saved = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.ckpt"))
    assert saved == ["hpc_ckpt_1.ckpt"], "the stopping run wrote a checkpoint after the pre-emption one"
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == last_batch + 1

    fit(built, run, STEPS, "--checkpoint.every_n_train_steps", "1000", "--ckpt_path", "last")
    assert users_by_step(run) == users_by_step(uninterrupted)
    curves = {name: list((folder / "tensorboard").iterdir()) for name, folder in
              (("plain", uninterrupted), ("run", run))}  # fmt: skip
    assert [p.name for p in curves["run"]] == ["4242"]  # one curve across the stop: the job id
    losses = {name: scalars(found[0])["train/loss"] for name, found in curves.items()}
    assert losses["run"] == losses["plain"] and len(losses["run"]) == STEPS
    a, b = final(uninterrupted), final(run)
    assert b["global_step"] == STEPS and b["epoch"] == a["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.parametrize("stop_at_end", [True, False])
def test_a_run_that_stopped_at_or_near_an_epochs_end_goes_on_with_the_right_epoch(
    built, uninterrupted, tmp_path, stop_at_end
):
    """``max_steps`` reached at (or one batch before) an epoch's end: ``on_train_end`` writes
    ``last.ckpt`` with that epoch marked finished; a longer run resumed from it reads the same
    users at every step as the longer run made at once. (The weights differ by design: the
    learning-rate schedule spans ``max_steps``.)"""
    first = steps_per_epoch(built) - (0 if stop_at_end else 1)
    run = tmp_path / "run"
    fit(built, run, first)
    assert final(run)["global_step"] == first
    fit(built, run, STEPS, "--ckpt_path", "last")
    assert users_by_step(run) == users_by_step(uninterrupted)
    assert final(run)["global_step"] == STEPS
    if stop_at_end:  # one batch before the end, Lightning still counts one epoch too many
        assert final(run)["epoch"] == final(uninterrupted)["epoch"]


def test_a_restored_finished_pass_is_followed_by_the_next_epoch_from_its_start(built):
    dm = UserUDataModule(str(built), batch_size=BATCH)
    dm.setup("fit")

    def epoch_pass(epoch: int) -> list[list[str]]:
        loader = UserStreamLoader(dm.make_dataset())
        loader.set_epoch(epoch)
        return [b["user_id"] for b in loader]

    loader = UserStreamLoader(dm.make_dataset(), epoch_fn=lambda: 0)
    assert [b["user_id"] for b in loader] == epoch_pass(0)
    counter = {"now": 0}  # the trainer's counter is read before Lightning restores it
    resumed = UserStreamLoader(dm.make_dataset(), epoch_fn=lambda: counter["now"])
    resumed.load_state_dict(loader.state_dict())
    assert [b["user_id"] for b in resumed] == epoch_pass(1) != epoch_pass(0)
    counter["now"] = 2  # a change of the counter starts the next epoch, however far it moved
    assert [b["user_id"] for b in resumed] == epoch_pass(2)
    assert [b["user_id"] for b in resumed] == epoch_pass(2)  # no change: the same epoch again


def test_only_a_finished_epochs_batch_counters_are_cleared():
    def checkpoint(epochs: tuple[int, int, int, int], batches: int) -> dict:
        names = ("ready", "started", "processed", "completed")
        return {"loops": {"fit_loop": {
            "epoch_progress": {"current": dict(zip(names, epochs)), "total": dict(zip(names, epochs))},
            "epoch_loop.batch_progress": {"current": dict.fromkeys(names, batches),
                                          "total": dict.fromkeys(names, batches), "is_last_batch": True},
        }}}  # fmt: skip

    finished = checkpoint((1, 1, 1, 1), 5)
    assert clear_finished_epoch_batches(finished)
    progress = finished["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert set(progress["current"].values()) == {0} and progress["total"]["completed"] == 5
    assert not progress["is_last_batch"]
    for inside in (checkpoint((1, 1, 0, 0), 5), checkpoint((1, 1, 1, 0), 5), checkpoint((1, 1, 1, 1), 0)):
        before = json.dumps(inside, sort_keys=True)
        assert not clear_finished_epoch_batches(inside)
        assert json.dumps(inside, sort_keys=True) == before
    assert not clear_finished_epoch_batches({"state_dict": {}})  # a weights-only checkpoint


def test_a_checkpoint_from_before_the_epoch_key_with_workers_follows_the_trainers_counter(built):
    """Such a loader state does not say its epoch (it is inside the workers' states): the passes
    after it are the ones the trainer's counter names, as when it was written."""
    dm = UserUDataModule(str(built), batch_size=BATCH)
    dm.setup("fit")
    saved = UserStreamLoader(dm.make_dataset(), num_workers=2)
    saved.set_epoch(2)
    batches = iter(saved)
    next(batches)
    state = saved.state_dict()
    del batches
    state.pop(UserStreamLoader.EPOCH_KEY)
    counter = {"now": 1}  # whatever it says first (the workers' states hold epoch 2) ...
    resumed = UserStreamLoader(dm.make_dataset(), num_workers=2, epoch_fn=lambda: counter["now"])
    resumed.load_state_dict(state)
    assert len(list(resumed)) == len(resumed) - 1  # the rest of the saved pass
    counter["now"] = 3  # ... the next pass is the epoch it names, not the one after its first value
    fresh = UserStreamLoader(dm.make_dataset(), num_workers=2)  # workers interleave their batches
    fresh.set_epoch(3)
    assert [b["user_id"] for b in resumed] == [b["user_id"] for b in fresh]
