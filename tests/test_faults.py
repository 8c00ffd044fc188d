"""Faults and bad input, one test per case of the reliability table (docs/reliability.md).

A bad input ends with exit code 2 and one line naming the thing at fault; a fault leaves nothing
lost, mixed or duplicated, and a rerun gives the exact result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_modules.etl.build import BuildConfig, build
from data_modules.etl.manifest import Manifest
from data_modules.etl.scenarios import Scenario, save_scenarios
from tests.conftest import ROOT, run_qanchor
from tests.helpers.small_raw import write_raw


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed as a user mistake: exit 2 and one ``error:`` line holding ``needles``."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


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
                              tokenizer_vocab=1024))  # fmt: skip
    before = {p: (out / p).read_bytes() for p in files_under(out)}
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.killed_build", str(raw_world), str(out), "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before  # untouched, not mixed
    Manifest.load(out).verify(out)
    leftovers = list(tmp_path.glob(".data.tmp-*"))
    assert leftovers, "the killed build's staging folder is where the kill left it"
    second = build(BuildConfig(raw=str(raw_world), out=str(out), users_per_shard=100, row_group_size=32,
                               tokenizer_vocab=1024, split_seed=5))  # fmt: skip
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
