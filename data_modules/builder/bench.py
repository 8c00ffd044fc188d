"""``qanchor bench build``: users per second per task and peak memory of a partitioned build.

For each user count a synthetic raw set is written once (kept under ``--work`` for reuse), then built
with 1, 2, 4 ... partitions through the real CLI, one stage after another as the SLURM chain runs
them (plan, every stats task, every shards task, finish), each stage a fresh process whose wall
time and peak RSS (sampled every 20 ms, worker processes included) are recorded.

Per task: users/s = the partition's users / (its scatter + stats + shards seconds). The tasks run
one after another here (2 cores), so each has the machine to itself, as on its own node; the wall
time of the chain on T nodes is plan + the slowest task of each array + finish, which gives the
speed-up.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_modules.util.errors import DataError
from data_modules.util.memory import PeakRSS


@dataclass
class BenchBuildConfig:
    """Users/s per task and peak RSS of `qanchor build --partition I/N`, for several sizes and task counts."""

    users: str = "10000,40000,160000"
    """comma-separated synthetic user counts"""
    tasks: str = "1,2,4"
    """comma-separated partition (array task) counts"""
    work: str = "runs/bench/build"
    """folder for the synthetic raw sets (kept and reused) and the builds (removed after each)"""
    workers: int = 1
    """shard-writing processes per task (build --workers)"""
    seed: int = 0
    """synthetic world seed"""
    refresh_days: int = 0
    """also time a daily refresh (`build --previous`): the world's last DAYS days arrive as the new
    raw files over the data set built without them; rows mode=refresh beside mode=full on all days
    (0: no refresh)"""


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise DataError(what, f"'{text}'", expected="comma-separated positive integers")
    return values


def _run(args: list[str]) -> tuple[float, int]:
    """Run ``qanchor ARGS`` in a fresh process: (seconds, peak RSS in bytes of it and its worker
    processes, sampled every 20 ms)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qanchor_pl.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    with PeakRSS(proc.pid, every=0.02) as mem:
        err = proc.stderr.read()
        proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"qanchor {' '.join(args)} failed (exit {proc.returncode}):\n{err.decode()[-2000:]}"
        )
    return seconds, mem.peak


def _one_build(raw: Path, out: Path, tasks: int, workers: int, *extra: str) -> dict:
    base = ["build", "--raw", str(raw), "--out", str(out), "--workers", str(workers), *extra]
    plan_s, plan_rss = _run([*base, "--stage", "plan", "--partitions", str(tasks)])
    per_task = [{"partition": i} for i in range(tasks)]
    for stage in ("scatter", "stats", "shards"):
        for i in range(tasks):
            seconds, rss = _run([*base, "--stage", stage, "--partition", f"{i}/{tasks}"])
            per_task[i][f"{stage}_s"] = round(seconds, 2)
            per_task[i]["peak_rss_mb"] = max(per_task[i].get("peak_rss_mb", 0), round(rss / 2**20))
    parts = out.with_name(f".{out.name}.parts")
    for i in range(tasks):
        stats = json.loads((parts / f"stats-{i:05d}-of-{tasks:05d}" / "stats.json").read_text())
        seconds = per_task[i]["scatter_s"] + per_task[i]["stats_s"] + per_task[i]["shards_s"]
        per_task[i].update(users=stats["users"], users_per_s=round(stats["users"] / seconds))
    finish_s, finish_rss = _run([*base, "--stage", "finish"])
    users = sum(t["users"] for t in per_task)
    rates = sorted(t["users_per_s"] for t in per_task)
    array_wall = (
        plan_s
        + finish_s
        + sum(max(t[f"{stage}_s"] for t in per_task) for stage in ("scatter", "stats", "shards"))
    )
    return {
        "mode": "refresh" if "--previous" in extra else "full",
        "raw_events_read_mb": round(
            sum(p.stat().st_size for p in (raw / "events").rglob("*.parquet")) / 2**20, 1
        ),
        "users": users,
        "tasks": tasks,
        "users_per_s_per_task": {"min": rates[0], "median": rates[len(rates) // 2], "max": rates[-1]},
        "peak_rss_mb_per_task": max(t["peak_rss_mb"] for t in per_task),
        "plan_s": round(plan_s, 2),
        "plan_peak_rss_mb": round(plan_rss / 2**20),
        "finish_s": round(finish_s, 2),
        "finish_peak_rss_mb": round(finish_rss / 2**20),
        "array_wall_s": round(array_wall, 2),
        "array_users_per_s": round(users / array_wall),
        "per_task": per_task,
    }


def _split_last_days(raw: Path, days: int) -> dict[str, Path]:
    """``raw`` as yesterday's raw folder (all but the last ``days`` days of events) and today's (the
    last ``days`` days), each with the same users, scenarios and other tables (kept for reuse)."""
    import datetime as dt

    import polars as pl

    folders = {
        "old": raw.with_name(raw.name + f"-before-last-{days}d"),
        "new": raw.with_name(raw.name + f"-last-{days}d"),
    }
    if all((f / "scenarios.json").exists() for f in folders.values()):
        return folders
    events = pl.scan_parquet(sorted((raw / "events").glob("*.parquet")))
    last = events.select(pl.col("ts").max()).collect().item()
    since = dt.datetime.combine(last.date(), dt.time()) - dt.timedelta(days=days - 1)
    for name, keep in (("old", pl.col("ts") < since), ("new", pl.col("ts") >= since)):
        folder = folders[name]
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "events").mkdir(parents=True)
        events.filter(keep).sink_parquet(folder / "events" / "part-00000.parquet")
        for small in raw.iterdir():
            if small.is_file():
                shutil.copy(small, folder / small.name)
    return folders


def bench_build(cfg: BenchBuildConfig) -> dict:
    """Build each synthetic size with each task count; returns the figures (JSON)."""
    from data_modules.synth.world import write_world

    sizes, task_counts = _ints(cfg.users, "--users"), _ints(cfg.tasks, "--tasks")
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        raw = work / f"raw-{n}-seed{cfg.seed}"
        if not (raw / "scenarios.json").exists():
            shutil.rmtree(raw, ignore_errors=True)
            write_world(raw, n_users=n, seed=cfg.seed)
        yesterday = _split_last_days(raw, cfg.refresh_days) if cfg.refresh_days else None
        for tasks in task_counts:
            out = work / f"data-{n}-{tasks}"
            shutil.rmtree(out, ignore_errors=True)
            row = _one_build(raw, out, tasks, cfg.workers)
            shutil.rmtree(out, ignore_errors=True)
            results.append(row)
            if yesterday is not None:
                previous = work / f"data-{n}-{tasks}-yesterday"
                shutil.rmtree(previous, ignore_errors=True)
                keep = ("--refreshable", "true")
                _one_build(yesterday["old"], previous, tasks, cfg.workers, *keep)  # partitioned as every day
                row = _one_build(
                    yesterday["new"], out, tasks, cfg.workers, "--previous", str(previous), *keep
                )
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(previous, ignore_errors=True)
                results.append(row)
    for row in results:  # speed-up of the array against one task on the same data
        one = next((r for r in results if r["users"] == row["users"] and r["tasks"] == 1
                    and r["mode"] == row["mode"]), None)  # fmt: skip
        if one is not None:
            row["speedup_vs_1_task"] = round(one["array_wall_s"] / row["array_wall_s"], 2)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "workers_per_task": cfg.workers,
        "refresh_days": cfg.refresh_days,
        "runs": results,
    }
