"""Faults and bad input, one test per case of the reliability table (docs/reliability.md).

A bad input ends with exit code 2 and one line naming the thing at fault; a fault leaves nothing
lost, mixed or duplicated, and a rerun gives the exact result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.scenarios import Scenario, save_scenarios
from data_modules.dataset.manifest import Manifest
from tests.conftest import ROOT, run_qanchor
from tests.helpers.small_raw import write_raw


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed as a user mistake: exit 2, no traceback, and it ends with one ``error:``
    line holding ``needles`` (warnings logged before it may precede it)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- 1. writes outside their folder ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../escaped", "/tmp/escaped-abs", ".."])
def test_a_scenario_name_that_is_a_path_is_refused_and_nothing_is_written(tmp_path, bad):
    raw = write_raw(tmp_path)
    save_scenarios(raw / "scenarios.json", [Scenario(bad, "Will the user shop?", "Retail", ("shop",))])
    work = tmp_path / "work"
    work.mkdir()
    before = files_under(tmp_path)
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(work / "out" / "data"), check=False)
    one_line_error(proc, "scenarios.json", f"'{bad}' cannot be used as a file name")
    assert files_under(tmp_path) == before
    assert not Path("/tmp/escaped-abs.parquet").exists()


def test_a_modality_name_that_is_a_path_is_refused(tmp_path):
    raw = write_raw(tmp_path)
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "d"), "--modalities", "bill,../x",
                       check=False)  # fmt: skip
    one_line_error(proc, "--modalities", "'../x' cannot be used as a file name")
    (raw / "modalities.json").write_text(json.dumps([{"name": "/etc/bill"}]))
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "d"), check=False)
    one_line_error(proc, "modalities.json", "'/etc/bill' cannot be used as a file name")
    assert not (tmp_path / "d").exists()


def test_tune_refuses_a_scenario_that_would_leave_the_run_folder(built, pretrained, tmp_path):
    from tests.helpers.cli_args import tune_args

    proc = run_qanchor(*tune_args(built, pretrained, tmp_path / "run", 2, "--data.scenario", "../../escaped"),
                       check=False)  # fmt: skip
    one_line_error(proc, "--data.scenario", "'../../escaped' cannot be used as a file name")
    assert not (tmp_path / "run").exists() and not (tmp_path.parent / "escaped").exists()


# -- 2. a killed rebuild never mixes two builds --------------------------------------------------
def test_a_killed_rebuild_leaves_the_old_data_set_whole_and_a_rerun_cleans_up(raw_world, tmp_path):
    out = tmp_path / "data"
    first = build(BuildConfig(raw=str(raw_world), out=str(out), users_per_shard=100, row_group_size=32,
                              tokenizer_vocab=1024, min_class_users=0))  # fmt: skip
    before = {p: (out / p).read_bytes() for p in files_under(out)}
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.killed_build", str(raw_world), str(out), "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before  # untouched, not mixed
    Manifest.load(out).verify(out)
    leftovers = list(tmp_path.glob(".data.tmp-*"))
    assert leftovers, "the killed build's staging folder is where the kill left it"
    second = build(BuildConfig(raw=str(raw_world), out=str(out), users_per_shard=100, row_group_size=32,
                               tokenizer_vocab=1024, min_class_users=0, split_seed=5))  # fmt: skip
    assert not list(tmp_path.glob(".data.tmp-*")) and not (tmp_path / ".data.lock").exists()
    Manifest.load(out).verify(out)
    assert (
        second.config["split_seed"] == 5
        and first.files["vocab/bill.parquet"] == second.files["vocab/bill.parquet"]
    )
    assert set(second.files) | {"manifest.json"} == files_under(out)


def test_build_refuses_to_replace_a_folder_that_is_not_a_data_set(tmp_path):
    raw = write_raw(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(home), check=False)
    one_line_error(proc, str(home), "holds no manifest.json")
    assert (home / "thesis.tex").read_text() == "precious"


# -- 3. verified reads ------------------------------------------------------------------------------
def embed_args(model, data, out, *extra) -> list[str]:
    return ["embed", "--model", str(model), "--data", str(data), "--scenarios", "Takeout,Login", "--out", str(out),
            "--batch-size", "32", "--part-batches", "2", "--accelerator", "cpu", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def embedded(built, pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embedded") / "emb"
    run_qanchor(*embed_args(pretrained, built, out))
    return out


def evaluate_args(data, *embeddings, out) -> list[str]:
    emb = ["--embeddings", json.dumps([str(e) for e in embeddings])] if embeddings else []
    return ["evaluate", "--data", str(data), *emb, "--baselines", "mean-events", "--scenarios", "Takeout,Login",
            "--n_boot", "10", "--out", str(out)]  # fmt: skip


def test_evaluate_refuses_a_corrupted_benchmark_naming_it(built, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(built, data)
    bench = data / "benchmarks" / "Login.parquet"
    raw = bytearray(bench.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte
    bench.write_bytes(bytes(raw))
    proc = run_qanchor(*evaluate_args(data, out=tmp_path / "ev"), check=False)
    one_line_error(proc, "benchmarks/Login.parquet", "checksum mismatch")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_evaluate_refuses_a_corrupted_or_mixed_embedding_folder_naming_the_part(built, embedded, tmp_path):
    emb = tmp_path / "emb"
    shutil.copytree(embedded, emb)
    part = sorted((emb / "parts").iterdir())[0]
    part.write_bytes(part.read_bytes()[:-10])
    proc = run_qanchor(*evaluate_args(built, emb, out=tmp_path / "ev"), check=False)
    one_line_error(proc, part.name, "size")
    # a part of another job dropped into the folder is not read (only the manifest's parts are)
    shutil.rmtree(emb)
    shutil.copytree(embedded, emb)
    shutil.copy(sorted((emb / "parts").iterdir())[0], emb / "parts" / "part-r000-999999.parquet")
    ok = json.loads(run_qanchor(*evaluate_args(built, emb, out=tmp_path / "ev"), "--json").stdout)
    assert set(ok["rows"]) == {"mean-events", "emb"}


# -- 7. an embedding job is never mixed with another ------------------------------------------------
def test_rerunning_embed_with_other_options_into_its_folder_is_refused(built, pretrained, embedded, tmp_path):
    out = tmp_path / "emb"
    shutil.copytree(embedded, out)
    before = {p: (out / p).read_bytes() for p in files_under(out)}
    proc = run_qanchor(*embed_args(pretrained, built, out)[:-2], "--accelerator", "cpu", "--batch-size", "16",
                       check=False)  # fmt: skip
    one_line_error(proc, str(out), "batch_size")
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before


# -- 4. encoder identity is its content, not its name -----------------------------------------------
def tiny_text_encoder(folder: Path, tokenizer: Path, seed: int) -> Path:
    """A random 2-layer BERT (hidden 32) saved as a Hugging Face folder, with the given tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, folder / f.name)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    config = BertConfig(vocab_size=len(vocab) + 8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def test_vectors_of_a_same_named_other_encoder_are_refused(built, tmp_path):
    from tests.helpers.cli_args import pretrain_args

    data_a, data_b = tmp_path / "data_a", tmp_path / "data_b"
    shutil.copytree(built, data_a)
    shutil.copytree(built, data_b)
    enc_a = tiny_text_encoder(tmp_path / "a" / "enc", built / "tokenizer", seed=1)
    enc_b = tiny_text_encoder(tmp_path / "b" / "enc", built / "tokenizer", seed=2)  # same name "enc"
    run_qanchor("encode", "--data", str(data_a), "--encoder", str(enc_a))
    run_qanchor("encode", "--data", str(data_b), "--encoder", str(enc_b))
    info_a, info_b = (Manifest.load(d).encoders["active"] for d in (data_a, data_b))
    assert info_a["name"] == info_b["name"] == "enc-cls" and info_a["sha256"] != info_b["sha256"]
    run_qanchor(*pretrain_args(data_a, tmp_path / "run", 2))
    model = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = run_qanchor(*embed_args(model, data_b, tmp_path / "emb"), check=False)
    one_line_error(proc, str(data_b / "manifest.json"), f"encoder sha256 {info_b['sha256'][:12]}")
    run_qanchor(*embed_args(model, data_a, tmp_path / "emb_a"))  # its own encoder's vectors: accepted
    # encode's resume and reuse go by content too: re-encoding B with A replaces every vector
    report = json.loads(run_qanchor("encode", "--data", str(data_b), "--encoder", str(enc_a)).stdout)
    assert all(n > 0 for n in report["encoded_rows"].values())
    assert Manifest.load(data_b).encoders["active"]["sha256"] == info_a["sha256"]


# -- 5. one run per run folder ----------------------------------------------------------------------
def test_a_second_run_on_a_busy_run_folder_is_refused_and_a_dead_runs_lock_is_taken_over(built, tmp_path):
    from tests.helpers.cli_args import pretrain_args

    run = tmp_path / "run"
    args = pretrain_args(built, run, 400, "--checkpoint.every_n_train_steps", "1")
    first = subprocess.Popen([sys.executable, "-m", "qanchor_pl.cli", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.2)
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] and holder["started"]
        second = run_qanchor(*args, "--ckpt_path", "last", check=False)
        one_line_error(second, f"run folder {run} is in use by pid {first.pid}")
    finally:
        first.kill()
        first.wait()
    assert (run / ".lock").exists()  # SIGKILL left it; its pid is gone: stale, taken over
    steps = json.loads(run_qanchor(*pretrain_args(built, run, 3), "--ckpt_path", "last", "--json").stdout)
    assert steps["global_step"] >= 3 and not (run / ".lock").exists()


# -- 6. a truncated checkpoint is passed over ---------------------------------------------------------
def test_resume_passes_over_a_truncated_last_ckpt_and_finds_a_versioned_one(built, tmp_path):
    import torch

    from tests.helpers.cli_args import pretrain_args

    run = tmp_path / "run"
    every = ["--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1"]
    run_qanchor(*pretrain_args(built, run, 4, *every))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = run_qanchor(*pretrain_args(built, run, 6, *every), "--ckpt_path", "last")
    assert f"checkpoint {last} does not load" in proc.stderr and "step0000004.ckpt (step 4)" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["global_step"] == 6
    # a versioned last-v1.ckpt (Lightning's name when last.ckpt existed) is a checkpoint like any other
    for p in (run / "checkpoints").glob("step*.ckpt"):
        p.unlink()
    (run / "checkpoints" / "last.ckpt").rename(run / "checkpoints" / "last-v1.ckpt")
    proc = run_qanchor(*pretrain_args(built, run, 7, *every), "--ckpt_path", "last")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    # none loads: one line, not a traceback
    for p in (run / "checkpoints").glob("*.ckpt"):
        p.write_bytes(b"not a checkpoint")
    one_line_error(
        run_qanchor(*pretrain_args(built, run, 8), "--ckpt_path", "last", check=False), "no checkpoint in"
    )


# -- 8. a stray late event does not move the cutoff; a one-class scenario stops the build ------------
def test_one_stray_late_event_leaves_the_default_cutoff_and_a_single_class_scenario_is_refused(
    raw_world, tmp_path
):
    import datetime as dt

    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    shutil.copytree(raw_world, raw)
    first = sorted((raw / "events").glob("*.parquet"))[0]
    row = pq.read_table(first).slice(0, 1).to_pylist()[0]
    row["ts"] = row["ts"] + dt.timedelta(days=400)  # a clock gone wrong
    pq.write_table(pq.read_table(first).schema.empty_table().from_pylist([row], schema=pq.read_schema(first)),
                   raw / "events" / "zz-stray.parquet")  # fmt: skip
    small = ["--users_per_shard", "100", "--min_class_users", "0"]  # 300 users: one rare scenario
    clean = run_qanchor("build", "--raw", str(raw_world), "--out", str(tmp_path / "clean"), *small)
    stray = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "stray"), *small)
    assert Manifest.load(tmp_path / "stray").cutoff == Manifest.load(tmp_path / "clean").cutoff
    assert "default cutoff" in stray.stderr and "1 later events on sparse days" in stray.stderr
    assert "default cutoff" in clean.stderr
    classes = Manifest.load(tmp_path / "clean").counts["benchmarks"]["Takeout"]["classes"]
    assert min(classes["train"]["1"], classes["test"]["1"], classes["train"]["0"], classes["test"]["0"]) > 0
    # a cutoff past the data: no future events, every label 0: refused, naming the scenario
    late = (row["ts"] + dt.timedelta(days=1)).date().isoformat()
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "late"), "--cutoff", late,
                       "--history_days", "1000", check=False)  # fmt: skip
    one_line_error(proc, "scenario '", "users with label 1 in train", "--min-class-users")
    assert not (tmp_path / "late").exists()


# -- 9, 10, 12: duplicates, QA of unknown users, very long texts: counted ----------------------------
def test_duplicates_unknown_users_qa_and_overlong_texts_are_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.small_raw import build_small, events_table

    ev = events_table()
    long_text = "x" * 1_000_000  # no spaces: quadratic in a subword tokenizer
    rows = ev.to_pylist()
    rows.append(dict(rows[0]))  # an exact duplicate (a log shipped twice)
    rows.append({**rows[1], "text": long_text})
    raw = write_raw(tmp_path, events=pa.Table.from_pylist(rows, schema=ev.schema))
    pq.write_table(pa.table({"user_id": ["a", "zz"], "query": ["What?", "Who?"], "answer": ["This.", "Them."]}),
                   raw / "qa.parquet")  # fmt: skip
    m = build_small(raw, tmp_path, min_class_users=0, max_text_chars=500)
    assert m.skipped["duplicate_events"] == 1
    assert m.skipped["qa_pairs_of_unknown_users"] == 1
    assert m.skipped["event_texts_truncated"] == 1
    assert m.counts["history_events"] == len(rows) - 1
    vocab = pq.read_table(tmp_path / "data" / "vocab" / "app.parquet").column("text").to_pylist()
    assert "x" * 500 in vocab and max(len(t) for t in vocab) == 500


# -- 11, 13. one line, not a traceback -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "values", "needles"),
    [
        ("value", [5.0, None, float("nan"), None, 9.0], ["column 'value', row 2", "non-finite value nan"]),
        ("value", [5.0, None, 7.0, None, float("inf")], ["column 'value', row 4", "non-finite value inf"]),
        ("user_id", ["a", "a", " ", "b", "c"], ["column 'user_id', row 2", "empty user_id"]),
    ],
)
def test_bad_event_values_are_one_line_naming_file_column_and_row(tmp_path, column, values, needles):
    from tests.helpers.small_raw import events_table

    raw = write_raw(tmp_path, events=events_table(**{column: values}))
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "d"), check=False)
    one_line_error(proc, "part-0.parquet", *needles)


def test_non_utf8_text_is_one_line_naming_the_file(tmp_path):
    import pyarrow as pa

    from tests.helpers.small_raw import events_table

    ev = events_table()
    texts = [t.encode() for t in ev.column("text").to_pylist()]
    texts[1] = b"Used app \xff\xfe"  # Latin-1 bytes in a column that claims UTF-8
    offsets = pa.array([0, *__import__("itertools").accumulate(len(t) for t in texts)], pa.int32())
    bad = pa.Array.from_buffers(
        pa.string(), len(texts), [None, offsets.buffers()[1], pa.py_buffer(b"".join(texts))]
    )
    raw = write_raw(tmp_path, events=ev.set_column(ev.schema.get_field_index("text"), "text", bad))
    proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "d"), check=False)
    one_line_error(proc, "part-0.parquet")


def test_evaluate_with_an_empty_split_and_embed_with_no_scenario_are_one_line(built, pretrained, tmp_path):
    import pyarrow.parquet as pq

    from data_modules.dataset.manifest import file_entry

    data = tmp_path / "data"
    shutil.copytree(built, data)
    bench = data / "benchmarks" / "Login.parquet"
    table = pq.read_table(bench)
    pq.write_table(
        table.filter(pq.read_table(bench).column("split").to_numpy(zero_copy_only=False) == "train"), bench
    )
    m = Manifest.load(data)
    m.files["benchmarks/Login.parquet"] = file_entry(data, "benchmarks/Login.parquet", None)
    m.save(data)
    proc = run_qanchor(*evaluate_args(data, out=tmp_path / "ev"), check=False)
    one_line_error(proc, "Login.parquet", "test part has no users")
    proc = run_qanchor(*embed_args(pretrained, built, tmp_path / "e")[:5], "--scenarios", ",", "--out",
                       str(tmp_path / "e"), check=False)  # fmt: skip
    one_line_error(proc, "--scenarios names no scenario")


def test_bench_data_on_a_set_too_small_to_time_is_an_error(built):
    proc = run_qanchor("bench", "data", "--data", str(built), "--batch_size", "4096", check=False)
    one_line_error(proc, "holds every user: nothing to time")


def test_an_output_folder_that_cannot_be_written_is_one_line(built, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # an --out below a file cannot be made, root or not
    proc = run_qanchor(*evaluate_args(built, out=blocker / "ev"), check=False)
    one_line_error(proc, str(blocker))
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            one_line_error(
                run_qanchor(*evaluate_args(built, out=ro / "ev"), check=False), "Permission denied"
            )
        finally:
            ro.chmod(0o755)


def test_a_data_error_inside_pretraining_is_one_line(built, tmp_path):
    from tests.helpers.cli_args import pretrain_args

    data = tmp_path / "data"
    shutil.copytree(built, data)
    shard = data / "shards" / "shard-00001.parquet"
    shard.write_bytes(b"PAR1" + bytes(200) + b"PAR1")
    proc = run_qanchor(*pretrain_args(data, tmp_path / "run", 3, "--data.verify", "false", "--data.num_workers", "1"),
                       check=False)  # fmt: skip
    one_line_error(proc, "shard-00001.parquet")


# -- 14. same seed, data and config: the same weights, bit for bit, on a busy machine ----------------
@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_repeated_short_runs_on_a_busy_machine_give_bitwise_identical_weights(built, tmp_path, num_workers):
    """Four fresh runs under load, without (the CPU recipes) and with a loader worker process:
    bit-for-bit equal weights. Before MKL's vector-math CPU detection was settled in one thread
    (tests/test_vector_math.py), about one fresh process in 16 differed (docs/reliability.md)."""
    import torch

    from tests.helpers.cli_args import LORA, pretrain_args

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        weights = []
        for i in range(4):
            run = tmp_path / f"run{i}"
            run_qanchor(*pretrain_args(built, run, 4, *LORA, "--data.num_workers", str(num_workers)))
            weights.append(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    finally:
        for b in burners:
            b.kill()
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        differ = [k for k in other if not torch.equal(other[k], weights[0][k])]
        assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
