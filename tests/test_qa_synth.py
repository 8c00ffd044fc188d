"""qanchor qa-synth: LLM-written D_uqa with real tiny Qwen2 models made here (no download).

A random tiny model writes noise (all rejected, counted by reason); a tiny model taught one phrase
("Mostly Comedy.") is grounded exactly for users with Comedy ratings. Ranks: 2 gloo processes under
torchrun give the same merged files as one process; a killed run, rerun, finishes with the same result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.topics import load_topics, topic
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import encode_dataset
from data_modules.loading.datamodule import UserUDataModule
from data_modules.supervision.qa_synth import (
    SYSTEM,
    Generator,
    Prompt,
    QASynthConfig,
    build_prompts,
    iter_users,
    known_categories,
    reflect_generated,
    run_qa_synth,
    vocab_texts,
)
from data_modules.supervision.templated import Facts
from data_modules.util.hashing import sha256_folder
from qanchor_pl.model.backbone import write_shaped_backbone
from tests.conftest import ROOT, free_port, run_qanchor, torchrun_env
from tests.helpers.other_world import write_other_world
from tests.helpers.parrot import teach_phrase

SMALL = ["--topics-per-user", "3", "--chunk-users", "8", "--max-new-tokens", "8", "--batch-size", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A built + encoded ratings/fitness data set, a random tiny model and a phrase-taught one."""
    root = tmp_path_factory.mktemp("qasynth")
    raw = write_other_world(root / "raw", n_users=40)
    data = root / "data"
    build(
        BuildConfig(
            min_class_users=0,
            raw=str(raw),
            out=str(data),
            users_per_shard=16,
            row_group_size=8,
            tokenizer_vocab=600,
        )
    )
    encode_dataset(data, "hash", dim=16)
    write_shaped_backbone("tiny", str(data), root / "random")
    manifest = Manifest.load(data)
    cfg = QASynthConfig(data=str(data), model=str(root / "random"))
    topics = {t.name: t for t in load_topics(data / "topics.json", manifest.event_modalities)}
    vocab = vocab_texts(data, manifest.event_modalities)
    gen = Generator(root / "random", cfg, "cpu")
    prompts = [gen.render(SYSTEM, f"Activity log ({p.log_text})\n\nQuestion: {p.topic.question}")
               for u in list(iter_users(data, manifest))[:12] for p in build_prompts(u, topics, vocab, manifest, cfg)]  # fmt: skip
    teach_phrase(root / "random", root / "parrot", prompts, "Mostly Comedy.")
    return {"root": root, "data": data, "random": root / "random", "parrot": root / "parrot"}


def _copy_data(world, name: str) -> Path:
    out = world["root"] / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(world["data"], out, ignore=shutil.ignore_patterns("qa"))
    return out


def _merged(data: Path, version: str = "llm") -> list[dict]:
    return [
        r for f in sorted((data / "qa" / version).glob("*.parquet")) for r in pq.read_table(f).to_pylist()
    ]


def test_reflection_of_generated_answers():
    p = Prompt("u", topic("t", "q?"), "log", Facts(spans={'Rated "Heat" 4 stars'}), {"Action"})
    p.facts.add_numbers([4, 12])
    known = {"Action", "Drama"}
    assert (
        reflect_generated('Often "Heat" at 4 stars, 12 days ago; Action.', p, known) is None
    )  # partial quote
    assert reflect_generated("   ", p, known) == "empty"
    assert reflect_generated("Action 4\ufffd\x0f", p, known) == "garbled"
    assert reflect_generated('Loves "Titanic".', p, known) == "ungrounded_title"
    assert reflect_generated("Rated 5 stars.", p, known) == "unsupported_number"
    assert reflect_generated("Mostly Drama.", p, known) == "ungrounded_category"
    assert reflect_generated("A keen viewer.", p, known) == "uninformative"


def test_random_model_noise_is_counted_and_never_written(world):
    data = _copy_data(world, "d-random")
    proc = run_qanchor("qa-synth", "--data", str(data), "--model", str(world["random"]), *SMALL)
    result = json.loads(proc.stdout)
    rejected = {k: v for k, v in result.items() if k.startswith("rejected_")}
    assert result["prompts"] == result["kept"] + sum(rejected.values()) > 0
    assert result["users"] == 40 and rejected
    record = Manifest.load(data).qa["versions"]["llm"]
    assert (
        record["model_sha256"] == sha256_folder(world["random"]) and record["generator"] == "qanchor qa-synth"
    )
    assert record["counts"]["prompts"] == result["prompts"]
    assert len(_merged(data)) == 40  # one aligned row per user, whatever was kept
    # whatever was written passes reflection again
    manifest = Manifest.load(data)
    topics = {t.name: t for t in load_topics(data / "topics.json", manifest.event_modalities)}
    vocab, cfg = (
        vocab_texts(data, manifest.event_modalities),
        QASynthConfig(data=str(data), topics_per_user=3),
    )
    users = list(iter_users(data, manifest))
    known = known_categories(data, manifest)
    for u, row in zip(users, _merged(data)):
        prompts = {p.topic.name: p for p in build_prompts(u, topics, vocab, manifest, cfg)}
        for a, s in zip(row["qa_answer"], row["qa_source"]):
            assert reflect_generated(a, prompts[s.removeprefix("llm:")], known) is None


def test_taught_model_kept_only_where_grounded_and_training_reads_the_version(world):
    data = _copy_data(world, "d-parrot")
    result = run_qa_synth(QASynthConfig(data=str(data), model=str(world["parrot"]), topics_per_user=3,
                                        chunk_users=8, max_new_tokens=8, batch_size=8))  # fmt: skip
    assert result["kept"] > 0 and result.get("rejected_ungrounded_category", 0) > 0
    shards = {
        r["user_id"]: r for n in Manifest.load(data).shard_files for r in pq.read_table(data / n).to_pylist()
    }
    for row in _merged(data):
        cats = {c for m in ("rate", "workout") for c in shards[row["user_id"]][f"cat_{m}"]}
        assert all(a == "Mostly Comedy." for a in row["qa_answer"])
        assert bool(row["qa_answer"]) <= ("Comedy" in cats)
    answers = {}
    for version in ("templated", "llm", "templated+llm", "both"):
        dm = UserUDataModule(str(data), batch_size=40, shuffle=False, qa_version=version)
        ds = dm.make_dataset()
        table = ds._read_unit(0)
        answers[version] = table.column("qa_source").to_pylist()
    assert not any(s.startswith("llm:") for row in answers["templated"] for s in row)
    assert all(not s.startswith("uqa:") for row in answers["llm"] for s in row)
    assert any(s.startswith("llm:") for row in answers["llm"] for s in row)
    assert answers["both"] == answers["templated+llm"]
    assert all(any(s.startswith("uqa:") for s in row) for row in answers["both"])
    with pytest.raises(Exception, match="no QA version 'gpt'"):
        UserUDataModule(str(data), qa_version="gpt").make_dataset()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_ranks_and_a_killed_run_equal_one_rank(world):
    one = _copy_data(world, "d-one")
    run_qanchor("qa-synth", "--data", str(one), "--model", str(world["parrot"]), *SMALL)
    two = _copy_data(world, "d-two")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "qanchor_pl.cli", "qa-synth", "--data", str(two), "--model", str(world["parrot"]), *SMALL]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _merged(two) == _merged(one)
    counts = lambda d: Manifest.load(d).qa["versions"]["llm"]["counts"]  # noqa: E731
    assert counts(two) == counts(one)

    killed = _copy_data(world, "d-killed")
    parts = killed / "qa" / ".parts-llm"
    cmd = [
        sys.executable,
        "-m",
        "qanchor_pl.cli",
        "qa-synth",
        "--data",
        str(killed),
        "--model",
        str(world["parrot"]),
        *SMALL,
    ]
    job = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done_before = len(list(parts.glob("chunk-*.parquet")))
    assert 2 <= done_before < 5 and not (killed / "qa" / "llm").exists()
    rerun = json.loads(run_qanchor(*cmd[3:]).stdout)
    assert rerun["chunks_done_here"] == 5 - done_before
    assert _merged(killed) == _merged(one) and counts(killed) == counts(one)
    ids = [r["user_id"] for r in _merged(killed)]
    assert len(ids) == len(set(ids)) == 40


def test_missing_model_and_unsafe_version_are_one_line_errors(world, tmp_path):
    proc = run_qanchor(
        "qa-synth", "--data", str(world["data"]), "--model", str(tmp_path / "nope"), check=False
    )
    assert proc.returncode == 2 and "nope: model path not found" in proc.stderr
    proc = run_qanchor(
        "qa-synth", "--data", str(world["data"]), "--model", "Qwen/Qwen2.5-0.5B-Instruct", check=False
    )
    assert proc.returncode == 2 and "model not found locally" in proc.stderr
    proc = run_qanchor(
        "qa-synth",
        "--data",
        str(world["data"]),
        "--model",
        str(world["random"]),
        "--version",
        "../x",
        check=False,
    )
    assert proc.returncode == 2 and "'../x' cannot be used as a file name" in proc.stderr


def test_a_judge_model_filters_kept_answers_and_is_counted(world):
    settings = dict(
        model=str(world["parrot"]), limit_users=16, topics_per_user=2, chunk_users=8, max_new_tokens=6
    )
    plain = run_qa_synth(QASynthConfig(data=str(_copy_data(world, "d-nojudge")), **settings))
    data = _copy_data(world, "d-judge")
    judged = run_qa_synth(QASynthConfig(data=str(data), judge=str(world["random"]), **settings))
    assert judged["prompts"] == plain["prompts"] == 32
    # the judge sees exactly what reflection kept, and removes some or none of it
    assert judged["kept"] + judged.get("rejected_judge", 0) == plain["kept"] > 0
    record = Manifest.load(data).qa["versions"]["llm"]
    assert record["judge_sha256"] == sha256_folder(world["random"])
    assert len(_merged(data)) == 40 and not any(r["qa_answer"] for r in _merged(data)[16:])
