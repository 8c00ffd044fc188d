"""The raw folder's contract: every wrong shape of every file is one line naming the file, the entry
or row and what was expected, exit code 2, and nothing written (the real CLI, in process)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.inputs import RawInputs, read_inputs
from data_modules.dataset.manifest import Manifest
from qanchor_pl.cli import main
from tests.helpers.small_raw import CUT, events_table, users_table, write_raw

RULE = {"categories": ["shop"]}
SHOP = {"name": "Shop", "query": "Will the user shop?", "rule": RULE}


def scenarios(value):
    return ("scenarios.json", value)


def labels(**cols):
    base = {"user_id": ["a", "b"], "scenario": ["Shop", "Shop"], "label": [0, 1]}
    base.update(cols)
    return ("labels.parquet", pa.table({k: v for k, v in base.items() if v is not None}))


# (case, file -> content, the message's expected fragment); bytes are written as they are
CASES = [
    # scenarios.json: the file
    ("scenarios: a string at the top", scenarios("Shop"), r"scenarios\.json: the file holds a string \(expected a mapping name -> query"),
    ("scenarios: a number at the top", scenarios(3), r"scenarios\.json: the file holds a number"),
    ("scenarios: an empty list", scenarios([]), r"scenarios\.json: no entries"),
    ("scenarios: an empty mapping", scenarios({}), r"scenarios\.json: no entries"),
    ("scenarios: an empty file", ("scenarios.json", b""), r"scenarios\.json: empty file"),
    ("scenarios: only whitespace", ("scenarios.json", b"  \n"), r"scenarios\.json: empty file"),
    ("scenarios: not UTF-8", ("scenarios.json", '{"Shop": "Kaufen Sie?"}'.encode("latin-1") + b"\xff"), r"scenarios\.json: not UTF-8 \(byte 0xff"),
    ("scenarios: malformed JSON", ("scenarios.json", b'{"Shop": '), r"scenarios\.json: not valid JSON \(line 1, column"),
    # scenarios.json: an entry
    ("scenarios: an entry that is a string", scenarios(["Shop"]), r"scenarios\.json, entry 0: is a string \(expected an object\)"),
    ("scenarios: a mapping value that is a number", scenarios({"Shop": 3}), r"scenarios\.json, entry 'Shop': is a number \(expected a query string or an object\)"),
    ("scenarios: no name", scenarios([{"query": "q?", "rule": RULE}]), r"scenarios\.json, entry 0: no 'name'"),
    ("scenarios: an empty name", scenarios([{**SHOP, "name": " "}]), r"scenarios\.json, entry 0 \( \): 'name' is empty"),
    ("scenarios: a numeric name", scenarios([{**SHOP, "name": 7}]), r"scenarios\.json, entry 0: 'name' is a number"),
    ("scenarios: a name that is a path", scenarios([{**SHOP, "name": "../x"}]), r"scenarios\.json, entry 0 \(\.\./x\): '\.\./x' cannot be used as a file name"),
    ("scenarios: no query", scenarios([{"name": "Shop", "rule": RULE}]), r"scenarios\.json, entry 0 \(Shop\): no 'query' \(expected a non-empty string\)"),
    ("scenarios: an empty query", scenarios({"Shop": ""}), r"scenarios\.json, entry 'Shop': 'query' is empty"),
    ("scenarios: a query that is a list", scenarios([{**SHOP, "query": ["q?"]}]), r"scenarios\.json, entry 0 \(Shop\): 'query' is a list"),
    ("scenarios: a domain that is a number", scenarios([{**SHOP, "domain": 1}]), r"scenarios\.json, entry 0 \(Shop\): 'domain' is a number \(expected a string\)"),
    ("scenarios: a rule that is a string", scenarios([{**SHOP, "rule": "shop"}]), r"scenarios\.json, entry 0 \(Shop\): 'rule' is a string \(expected an object"),
    ("scenarios: categories that are a string", scenarios([{**SHOP, "rule": {"categories": "shop"}}]), r"scenarios\.json, entry 0 \(Shop\): 'categories' is a string"),
    ("scenarios: a category that is a number", scenarios([{**SHOP, "rule": {"categories": ["shop", 2]}}]), r"'categories' holds a value that is not a non-empty string"),
    ("scenarios: a rule without categories", scenarios([{**SHOP, "rule": {"categories": []}}]), r"scenarios\.json, entry 0 \(Shop\): 'rule' names no categories"),
    ("scenarios: rule modalities that are a string", scenarios([{**SHOP, "rule": {**RULE, "modalities": "bill"}}]), r"'modalities' is a string"),
    ("scenarios: a rule naming an absent modality", scenarios([{**SHOP, "rule": {**RULE, "modalities": ["radio"]}}]), r"scenarios\.json, entry 'Shop': rule names modality 'radio'"),
    ("scenarios: a duplicate name", scenarios([SHOP, SHOP]), r"scenarios\.json: duplicate scenario name 'Shop' \(entries 0 \(Shop\) and 1 \(Shop\)\)"),
    ("scenarios: a mapping entry with another name", scenarios({"Shop": {**SHOP, "name": "Buy"}}), r"scenarios\.json, entry 'Shop': has name 'Buy'"),
    ("scenarios: a query only and no labels", scenarios({"Shop": "Will the user shop?"}), r"scenarios\.json, entry 'Shop': has neither a rule nor labels .*\(the raw folder has none\)"),
    # modalities.json
    ("modalities: a string at the top", ("modalities.json", "bill"), r"modalities\.json: the file holds a string"),
    ("modalities: an entry without a name", ("modalities.json", [{"description": "payments"}]), r"modalities\.json, entry 0: no 'name'"),
    ("modalities: an unknown value_kind", ("modalities.json", [{"name": "bill", "value_kind": "money"}]), r"modalities\.json, entry 0 \(bill\): value_kind 'money' \(expected one of"),
    ("modalities: a numeric unit", ("modalities.json", {"bill": {"unit": 5}}), r"modalities\.json, entry 'bill': 'unit' is a number"),
    ("modalities: a duplicate modality", ("modalities.json", [{"name": "bill"}, {"name": "bill"}]), r"modalities\.json: duplicate modality name 'bill'"),
    ("modalities: an empty file", ("modalities.json", b""), r"modalities\.json: empty file"),
    ("modalities: a mapping value that is a list", ("modalities.json", {"bill": ["payments"]}), r"modalities\.json, entry 'bill': is a list"),
    # topics.json
    ("topics: a number at the top", ("topics.json", 1), r"topics\.json: the file holds a number"),
    ("topics: no question", ("topics.json", [{"name": "spend"}]), r"topics\.json, entry 0 \(spend\): no 'question'"),
    ("topics: an unknown kind", ("topics.json", {"spend": {"question": "How much?", "kind": "size"}}), r"topics\.json, entry 'spend': kind 'size'"),
    ("topics: keywords that are a string", ("topics.json", {"spend": {"question": "How much?", "keywords": "paid"}}), r"topics\.json, entry 'spend': 'keywords' is a string"),
    ("topics: a duplicate topic", ("topics.json", [{"name": "t", "question": "q?"}, {"name": "t", "question": "q?"}]), r"topics\.json: duplicate topic name 't'"),
    ("topics: an absent modality", ("topics.json", {"t": {"question": "q?", "modalities": ["radio"]}}), r"topics\.json, column 'modalities', entry 't': unknown modality 'radio'"),
    ("topics: not valid JSON", ("topics.json", b"[{]"), r"topics\.json: not valid JSON"),
    # labels.parquet
    ("labels: a label of 2", labels(label=[0, 2]), r"labels\.parquet, column 'label', row 1: label 2 \(expected 0 or 1\)"),
    ("labels: an unknown scenario", labels(scenario=["Shop", "Travel"]), r"labels\.parquet, column 'scenario', row 1: unknown scenario 'Travel'"),
    ("labels: an unknown user", labels(user_id=["a", "zz"]), r"labels\.parquet, column 'user_id', row 1: label for unknown user 'zz'"),
    ("labels: no label column", labels(label=None), r"labels\.parquet, column 'label': missing column"),
    ("labels: a duplicate label", labels(user_id=["a", "a"]), r"labels\.parquet, row 1: duplicate label for user 'a' in 'Shop'"),
    ("labels: an empty user id", labels(user_id=["a", " "]), r"labels\.parquet, column 'user_id', row 1: empty value"),
    ("labels: an empty file", ("labels.parquet", b""), r"labels\.parquet: not a readable parquet file"),
    # users, events, qa
    ("users: a duplicate id", ("users.parquet", users_table(user_id=["a", "b", "a"])), r"users\.parquet, column 'user_id', row 2: duplicate user_id 'a'"),
    ("users: a text feature", ("users.parquet", users_table(age=["30", "40", "50"])), r"users\.parquet, column 'age': has type string \(expected a numeric tabular feature\)"),
    ("users: an empty file", ("users.parquet", b""), r"users\.parquet: not a readable parquet file"),
    ("events: an empty file", ("events/part-0.parquet", b""), r"part-0\.parquet: not a readable parquet file"),
    ("events: no rows in any file", ("events/part-0.parquet", events_table().slice(0, 0)), r"events: every events file is empty"),
    ("events: no text column", ("events/part-0.parquet", events_table(text=None)), r"part-0\.parquet, column 'text': missing column"),
    ("qa: an empty answer", ("qa.parquet", pa.table({"user_id": ["a"], "query": ["q?"], "answer": [""]})), r"qa\.parquet, column 'answer', row 0: empty value"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI, run in process, points logging at this test's captured stderr: undo it after."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write(raw, name, content):
    path = raw / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:
        path.write_text(json.dumps(content))


def test_the_table_covers_forty_shapes():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, file_content, message", CASES, ids=[c[0] for c in CASES])
def test_every_wrong_shape_is_one_line_exit_2_nothing_written(tmp_path, capsys, case, file_content, message):
    raw = write_raw(tmp_path)
    write(raw, *file_content)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["build", "--raw", str(raw), "--out", str(tmp_path / "data"), "--cutoff", CUT.isoformat()])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_a_mapping_of_queries_with_labels_builds(tmp_path):
    """name -> query: the query only; the labels file gives the labels (and the data set keeps no rule)."""
    raw = write_raw(tmp_path)
    write(raw, "scenarios.json", {"Shop": "Will the user shop?"})
    write(raw, *labels())
    build(BuildConfig(raw=str(raw), out=str(tmp_path / "data"), cutoff=CUT.isoformat(), tokenizer_vocab=300,
                      min_class_users=0))  # fmt: skip
    manifest = Manifest.load(tmp_path / "data")
    assert manifest.counts["benchmarks"]["Shop"]["source"] == "labels"
    kept = json.loads((tmp_path / "data" / "scenarios.json").read_text())
    assert kept == [{"name": "Shop", "query": "Will the user shop?", "domain": "", "description": ""}]


def test_unknown_keys_are_warned_by_name_and_ignored(tmp_path, capsys):
    raw = write_raw(tmp_path)
    write(raw, "scenarios.json", [{**SHOP, "colour": "red", "rule": {**RULE, "window": 7}}])
    write(
        raw,
        "modalities.json",
        {"bill": {"description": "payments", "currency": "EUR"}, "app": {}, "search": {}},
    )
    code = main(["build", "--raw", str(raw), "--out", str(tmp_path / "data"), "--cutoff", CUT.isoformat(),
                 "--min_class_users", "0", "--tokenizer_vocab", "300"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "scenarios.json, entry 0 (Shop): unknown key 'colour' ignored" in err
    assert "scenarios.json, entry 0 (Shop) rule: unknown key 'window' ignored" in err
    assert "modalities.json, entry 'bill': unknown key 'currency' ignored" in err


def test_raw_inputs_are_immutable_and_travel_in_the_plan_unchanged(tmp_path):
    raw = write_raw(tmp_path)
    write(raw, "topics.json", {"spend": "How much does the user spend?"})
    write(raw, *labels())
    inputs = read_inputs(raw)
    assert RawInputs.from_json(json.loads(json.dumps(inputs.to_json()))) == inputs
    assert [t.name for t in inputs.topics] == ["spend"] and inputs.labels.scenarios == ("Shop",)
    with pytest.raises(AttributeError):
        inputs.scenarios = ()  # frozen
    assert inputs.users.features == ("age", "balance") and inputs.events[0].name == "part-0.parquet"


def test_experiment_stops_on_the_reported_shape_before_writing(tmp_path, capsys):
    """The first new user's case: ``qanchor experiment --raw`` with a mapping whose value is no query."""
    raw = write_raw(tmp_path)
    write(raw, "scenarios.json", {"drama40": {"query": "Will dramas dominate?", "rule": "Drama"}})
    code = main(["experiment", "--raw", str(raw), "--out", str(tmp_path / "exp")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert (
        lines[0].startswith("error: ") and "scenarios.json, entry 'drama40': 'rule' is a string" in lines[0]
    )
    assert not (tmp_path / "exp").exists()
