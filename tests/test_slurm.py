"""The real slurm/pretrain.sbatch on a real one-node SLURM cluster (slurm/local/start.sh):
a 2-task CPU DDP job, and a job pre-empted with SIGUSR1 that requeues itself and resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from data_modules.builder.runner import BuildConfig, build
from tests.conftest import ROOT
from tests.helpers.cli_args import SMALL
from tests.helpers.tb import scalars

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cluster(folder: Path, cpus: int, nodes: int = 1) -> Iterator[dict]:
    """Start slurm/local/start.sh in ``folder`` (``nodes`` slurmd of ``cpus`` CPUs, free ports), yield
    the environment to submit with, always stop it; skip with the reason where SLURM cannot run."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here (missing {missing}); apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root (SlurmUser=root)")
    port = _free_port()  # slurmctld; the slurmd take the next ports
    while any(_busy(p) for p in range(port + 1, port + 1 + nodes)):
        port = _free_port()
    env = dict(os.environ, SLURMCTLD_PORT=str(port), SLURMD_PORT=str(port + 1))
    try:
        start = subprocess.run([str(ROOT / "slurm/local/start.sh"), str(folder), str(cpus), str(nodes)], env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        if start.returncode != 0:
            text = "\n".join(p.read_text()[-2000:] for p in (folder / "log").glob("*.log"))
            pytest.fail(f"local SLURM cluster ({nodes} nodes) did not start:\n{start.stderr}\n{text}")
        yield dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))
    finally:
        subprocess.run([str(ROOT / "slurm/local/stop.sh"), str(folder)], timeout=60)


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_cluster(tmp_path_factory.mktemp("slurm"), cpus=2)


def sbatch(env, script: str, export: list[str], logs_in: Path, tasks: int = 2) -> str:
    """Submit slurm/SCRIPT as a user would, with only its variables (``export``) and the shape of
    this one-node cluster overridden; returns the job id."""
    out = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={logs_in}/slurm-%j.out", f"--error={logs_in}/slurm-%j.err", "--export=" + ",".join(["ALL", *export]),
         str(ROOT / "slurm" / script)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def submit(env, built, run_dir: Path, steps: int, *extra: str) -> str:
    qanchor = Path(sys.executable).parent / "qanchor"
    extra_args = " ".join(["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
                           "--trainer.max_steps", str(steps), "--sample_audit.ids", "true", *SMALL, *extra])  # fmt: skip
    export = ["RECIPE=recipes/pretrain/tiny-cpu.yaml", f"RUN_DIR={run_dir}", f"DATA={built}", f"QANCHOR={qanchor}",
              f"EXTRA_ARGS={extra_args}"]  # fmt: skip
    return sbatch(env, "pretrain.sbatch", export, run_dir)


def job_info(env, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def wait_done(env, job: str, timeout: float = 400) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(env, job)
        if info.get("JobState") in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ):
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} still {job_info(env, job).get('JobState')} after {timeout} s")


def preempt_after(env, job: str, run: Path, logged_steps: int) -> None:
    """Send SIGUSR1 (what SLURM sends before pre-emption) once rank 0 has logged ``logged_steps``
    steps, then release the requeued job at once (SLURM holds a requeued job back for a while)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        path = run / "samples-rank0.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= logged_steps:
            break
        assert job_info(env, job).get("JobState") in ("PENDING", "RUNNING"), logs(run)
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        info = job_info(env, job)
        if int(info.get("Restarts", 0)) >= 1 and info.get("JobState") == "PENDING":
            # SLURM's hold exists for a reason: a requeued job started in the second its previous
            # run's credential was revoked dies ("Job credential revoked", seen in CI). Release it
            # once the nodes have finished that run, and a second boundary later.
            while time.time() < deadline and nodes_busy(env):
                time.sleep(0.2)
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
            break
        time.sleep(0.2)


def nodes_busy(env) -> bool:
    """Whether a node of the cluster is still allocated or completing a job."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout
    return any(state.strip().rstrip("*~#") not in ("idle", "") for state in out.splitlines())


def build_chain(
    env, raw: Path, out: Path, folder: Path, *sbatch_options: str, previous: Path | None = None
) -> dict[str, str]:
    """`bash slurm/build.sbatch` with 2 partitions, as a user submits it from ``folder`` (a refresh of
    ``previous`` if given); waits for the finish job and returns the job ids by stage."""
    from tests.test_build_partitions import FLAGS

    extra = [*FLAGS, "--refreshable", "true"] if previous else FLAGS
    env = dict(env, RAW=str(raw), OUT=str(out), PARTITIONS="2", QANCHOR=str(Path(sys.executable).parent / "qanchor"),
               EXTRA_ARGS=" ".join(extra), PREVIOUS=str(previous or ""))  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "build.sbatch"), "--cpus-per-task=1", *sbatch_options],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = dict(item.split("=") for item in proc.stdout.split())
    info = wait_done(env, jobs["finish"], timeout=600)
    log_text = "\n".join(p.read_text()[-2000:] for p in sorted((folder / "slurm-logs").glob("*")))
    assert info["JobState"] == "COMPLETED", log_text
    return jobs


def audit(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(x) for x in (run_dir / f"samples-rank{rank}.jsonl").read_text().splitlines()]


def logs(run_dir: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(run_dir.glob("slurm-*")))


def test_two_task_ddp_job_with_the_real_sbatch_script(cluster, built, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    job = submit(cluster, built, run, 6)
    info = wait_done(cluster, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", logs(run)
    assert '"world_size": 2' in logs(run)  # Lightning's DDP on SLURM, world size 2 (the summary line)
    assert [len(audit(run, r)) for r in (0, 1)] == [6, 6]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert [p.name for p in (run / "tensorboard").iterdir()] == [job]  # version = SLURM job id
    assert [s for s, _ in scalars(run / "tensorboard" / job)["train/loss"]] == list(range(6))


def test_sigusr1_preemption_requeues_and_resumes_without_losing_or_repeating_samples(
    cluster, built, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    steps, per_epoch = 14, -(-150 // 16)  # 150 users per rank, 16 per step: 10 steps per epoch
    job = submit(cluster, built, run, steps, "--checkpoint.every_n_train_steps", "1000")
    preempt_after(cluster, job, run, logged_steps=5)
    info = wait_done(cluster, job, timeout=600)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", logs(run)
    assert int(info["Restarts"]) == 1, logs(run)
    assert list(run.glob("hpc_ckpt_*.ckpt")), "no checkpoint was saved on SIGUSR1"
    assert [p.name for p in (run / "tensorboard").iterdir()] == [job]  # one curve across the requeue
    tb_steps = sorted({s for s, _ in scalars(run / "tensorboard" / job)["train/loss"]})
    assert tb_steps == list(range(steps))
    ranks = [audit(run, r) for r in (0, 1)]
    for rows in ranks:
        assert [row["step"] for row in rows] == list(range(steps))  # none lost, none repeated
    epoch0 = [u for rows in ranks for row in rows[:per_epoch] for u in row["users"]]
    assert len(epoch0) == len(set(epoch0)) == 300  # every user exactly once in the first epoch
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps


def test_embedding_job_with_the_real_sbatch_script_writes_a_part_set_per_task(
    cluster, built, pretrained, tmp_path
):
    out = tmp_path / "emb"
    qanchor = Path(sys.executable).parent / "qanchor"
    export = ["RECIPE=recipes/embed/tiny-cpu.yaml", f"MODEL={pretrained}", f"DATA={built}", f"OUT={out}",
              f"QANCHOR={qanchor}", "EXTRA_ARGS=--batch-size 16 --scenarios Takeout"]  # fmt: skip
    job = sbatch(cluster, "embed.sbatch", export, tmp_path)
    info = wait_done(cluster, job)
    assert info["JobState"] == "COMPLETED", logs(tmp_path)
    assert {p.name.split("-")[1] for p in (out / "parts").glob("*.parquet")} == {"r000", "r001"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 300 and manifest["job"]["world_size"] == 2  # every user once


def test_qa_synth_with_the_real_sbatch_script_shares_users_between_tasks(cluster, built, tmp_path):
    from qanchor_pl.model.backbone import write_shaped_backbone

    data = tmp_path / "data"
    shutil.copytree(built, data, ignore=shutil.ignore_patterns("qa"))
    model = write_shaped_backbone("tiny", str(data), tmp_path / "llm")["out"]
    qanchor = Path(sys.executable).parent / "qanchor"
    extra = "--topics-per-user 1 --max-new-tokens 4 --chunk-users 50 --device cpu"
    export = ["RECIPE=recipes/qa-synth/tiny-cpu.yaml", f"DATA={data}", f"MODEL={model}", f"QANCHOR={qanchor}",
              f"EXTRA_ARGS={extra}"]  # fmt: skip
    job = sbatch(cluster, "qa-synth.sbatch", export, tmp_path)
    info = wait_done(cluster, job)
    assert info["JobState"] == "COMPLETED", logs(tmp_path)
    text, results, decoder = (tmp_path / f"slurm-{job}.out").read_text(), [], json.JSONDecoder()
    while text.strip():  # one pretty-printed JSON result per task
        obj, end = decoder.raw_decode(text.strip())
        results.append(obj)
        text = text.strip()[end:]
    assert sorted(r["rank"] for r in results) == [0, 1] and {r["world_size"] for r in results} == {2}
    assert sorted(r["chunks_done_here"] for r in results) == [3, 3]  # 6 chunks of 50 users
    counts = json.loads((data / "manifest.json").read_text())["qa"]["versions"]["llm"]["counts"]
    assert counts["users"] == 300 and counts["prompts"] == 300


def test_a_requeued_tuning_job_resumes_instead_of_refusing(cluster, built, pretrained, tmp_path):
    """slurm/tune.sbatch runs with --ckpt_path last: the first start says it starts fresh, a
    resubmission into the same run folder (what a requeue is) resumes to the new step count."""
    run = tmp_path / "tune"
    qanchor = Path(sys.executable).parent / "qanchor"

    def submit(steps: int) -> dict[str, str]:
        extra = (f"--trainer.accelerator cpu --trainer.max_steps {steps} --data.batch_size 16 "
                 "--trainer.check_val_every_n_epoch null --trainer.val_check_interval 2 --step_log.every_n_steps 1")  # fmt: skip
        export = ["RECIPE=tune/tiny-cpu", f"PRETRAINED={pretrained}", f"DATA={built}", "SCENARIO=Takeout",
                  f"RUN_DIR={run}", f"QANCHOR={qanchor}", f"EXTRA_ARGS={extra}"]  # fmt: skip
        job = sbatch(cluster, "tune.sbatch", export, tmp_path, tasks=1)
        info = wait_done(cluster, job)
        assert info["JobState"] == "COMPLETED", logs(tmp_path)
        return info | {"err": (tmp_path / f"slurm-{job}.err").read_text()}

    first = submit(2)
    assert f"no checkpoint in {run / 'Takeout'}: starting fresh" in first["err"]
    second = submit(4)
    assert "starting fresh" not in second["err"] and "step 4/4" in second["err"]
    assert torch.load(run / "Takeout" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_two_partition_array_build_with_the_real_script_equals_the_one_process_build(
    cluster, built, raw_world, tmp_path
):
    """`bash slurm/build.sbatch` submits plan -> stats array -> shards array -> finish; the data set
    it builds has the same rows, vocabularies, benchmarks and statistics as `built`."""
    from tests.test_build_partitions import assert_same_data_set

    out = tmp_path / "data"
    build_chain(cluster, raw_world, out, tmp_path)
    logs_written = list((tmp_path / "slurm-logs").glob("qanchor-build-*.out"))
    assert len(logs_written) == 8  # plan, 2 + 2 + 2 array tasks, finish
    assert_same_data_set(built, out)


def test_a_daily_refresh_with_the_real_script_equals_the_full_build(cluster, tmp_path):
    """PREVIOUS=yesterday's data set: the chain reads only today's files and the kept events."""
    from tests.test_build_partitions import assert_same_data_set
    from tests.test_refresh import KEEP, split_world

    raw = split_world(tmp_path / "raw")
    previous, full = tmp_path / "previous", tmp_path / "full"
    build(BuildConfig(raw=str(raw["old"]), out=str(previous), **KEEP))
    build(BuildConfig(raw=str(raw["union"]), out=str(full), **KEEP))
    out = tmp_path / "data"
    build_chain(cluster, raw["new"], out, tmp_path, previous=previous)
    assert_same_data_set(full, out)
