"""The real SLURM scripts on a real two-node cluster on this machine (two slurmd, `slurmd -N`):
an array build whose tasks land on both nodes, a two-node DDP (gloo) pretraining that is
pre-empted, requeued and resumes exactly, and a two-node embedding job equal to the one-node one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers.cli_args import SMALL
from tests.helpers.tb import scalars
from tests.test_slurm import audit, build_chain, local_cluster, logs, preempt_after, wait_done

pytestmark = pytest.mark.slow
QANCHOR = str(Path(sys.executable).parent / "qanchor")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    for env in local_cluster(tmp_path_factory.mktemp("slurm2"), cpus=2, nodes=2):
        # node names n1, n2 resolve nowhere: torch's rendezvous goes over the loopback
        yield dict(env, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")


def submit(env, script: str, export: list[str], logs_in: Path, nodes: int, tasks_per_node: int) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--gpus-per-node=0",
         "--cpus-per-task=1", f"--output={logs_in}/slurm-%j.out", f"--error={logs_in}/slurm-%j.err",
         "--export=" + ",".join(["ALL", *export]), str(ROOT / "slurm" / script)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def nodes_of(env, job: str) -> set[str]:
    """The nodes the job (every task of an array) ran on, from the controller's records."""
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    found: set[str] = set()
    for value in re.findall(r"\bNodeList=(\S+)", text):
        found |= {"n1", "n2"} if value in ("n[1-2]", "n[1,2]") else {value}
    return found


def test_an_array_build_runs_its_partitions_on_both_nodes_and_equals_the_one_process_build(
    two_nodes, built, raw_world, tmp_path
):
    from tests.test_build_partitions import assert_same_data_set

    out = tmp_path / "data"
    # --exclusive: one array task per node, so the two partitions run on the two nodes
    jobs = build_chain(two_nodes, raw_world, out, tmp_path, "--exclusive")
    assert nodes_of(two_nodes, jobs["stats"]) == {"n1", "n2"}  # the two array tasks ran side by side
    assert_same_data_set(built, out)


def pretrain(env, built, run: Path, steps: int, *extra: str) -> str:
    extra_args = " ".join(["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.max_steps",
                           str(steps), "--sample_audit.ids", "true", *SMALL, *extra])  # fmt: skip
    export = ["RECIPE=recipes/pretrain/tiny-cpu.yaml", f"RUN_DIR={run}", f"DATA={built}", f"QANCHOR={QANCHOR}",
              f"EXTRA_ARGS={extra_args}"]  # fmt: skip
    return submit(env, "pretrain.sbatch", export, run, nodes=2, tasks_per_node=1)


def test_a_two_node_pretraining_is_preempted_requeued_and_resumes_exactly(two_nodes, built, tmp_path):
    """The pre-empted two-node run logs the same loss at every step, and ends with the same weights,
    as the same job left alone."""
    steps = 12
    plain = tmp_path / "plain"
    plain.mkdir()
    job = pretrain(two_nodes, built, plain, steps)
    info = wait_done(two_nodes, job, timeout=600)
    assert info["JobState"] == "COMPLETED", logs(plain)
    assert nodes_of(two_nodes, job) == {"n1", "n2"} and '"world_size": 2' in logs(plain)

    run = tmp_path / "run"
    run.mkdir()
    job = pretrain(two_nodes, built, run, steps, "--checkpoint.every_n_train_steps", "1000")
    preempt_after(two_nodes, job, run, logged_steps=4)
    info = wait_done(two_nodes, job, timeout=600)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, logs(run)
    assert list(run.glob("hpc_ckpt_*.ckpt")), "no checkpoint was saved on SIGUSR1"
    for rank in (0, 1):  # every step once on each node's rank, none lost or repeated
        assert [row["step"] for row in audit(run, rank)] == list(range(steps))
        assert [row["users"] for row in audit(run, rank)] == [row["users"] for row in audit(plain, rank)]
    losses = {name: scalars(folder / "tensorboard" / next((folder / "tensorboard").iterdir()).name)["train/loss"]
              for name, folder in (("plain", plain), ("run", run))}  # fmt: skip
    assert losses["run"] == losses["plain"] and len(losses["run"]) == steps
    a, b = (
        torch.load(f / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for f in (plain, run)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_node_embedding_job_equals_the_one_node_job(two_nodes, built, pretrained, tmp_path):
    """Rank r embeds the same user slice whatever the layout: 2 nodes x 1 task gives the parts of
    1 node x 2 tasks, bit for bit."""
    import pyarrow.parquet as pq

    def embed(out: Path, nodes: int, per_node: int) -> None:
        export = ["RECIPE=recipes/embed/tiny-cpu.yaml", f"MODEL={pretrained}", f"DATA={built}", f"OUT={out}",
                  f"QANCHOR={QANCHOR}", "EXTRA_ARGS=--batch-size 16 --scenarios Takeout,Fraud"]  # fmt: skip
        job = submit(two_nodes, "embed.sbatch", export, tmp_path, nodes=nodes, tasks_per_node=per_node)
        info = wait_done(two_nodes, job, timeout=600)
        assert info["JobState"] == "COMPLETED", logs(tmp_path)
        if nodes == 2:
            assert nodes_of(two_nodes, job) == {"n1", "n2"}

    embed(tmp_path / "one", 1, 2)
    embed(tmp_path / "two", 2, 1)
    for out in ("one", "two"):
        assert {p.name.split("-")[1] for p in (tmp_path / out / "parts").glob("*.parquet")} == {
            "r000",
            "r001",
        }
    parts = sorted(p.name for p in (tmp_path / "one" / "parts").glob("*.parquet"))
    assert parts == sorted(p.name for p in (tmp_path / "two" / "parts").glob("*.parquet"))
    for name in parts:
        assert pq.read_table(tmp_path / "one" / "parts" / name).equals(
            pq.read_table(tmp_path / "two" / "parts" / name)
        )
