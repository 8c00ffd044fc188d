"""Downstream scenarios: a name, the natural-language query that anchors it, a domain, a label rule.

``scenarios.json`` accepts three shapes (docs/your-logs.md):

- a mapping name -> query string: the query only; labels come from ``labels.parquet``;
- a mapping name -> object, or a list of objects with a ``name``: ``query`` (required),
  ``domain``, ``description``, and ``rule`` (``{"categories": [...], "modalities": [...]}``: a user
  is positive when they trigger one of these categories in the label window). A scenario needs a
  rule or rows in ``labels.parquet`` (checked against the labels by :class:`RawInputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_modules.contract.json_files import (
    check_unique,
    entries,
    json_type,
    read_json_file,
    string_list,
    text_field,
    warn_unknown_keys,
)
from data_modules.contract.names import check_name
from data_modules.util.errors import DataError

SHAPE = "a mapping name -> query (or -> object), or a list of {name, query, domain?, description?, rule?}"
KEYS = ("name", "query", "domain", "description", "rule")
RULE_KEYS = ("categories", "modalities")


@dataclass(frozen=True)
class Scenario:
    """A binary scenario. ``categories``: a user is positive if they trigger at least one event of
    these categories (restricted to ``modalities`` when given) in the prediction window; no
    categories: no rule, the labels file gives the labels."""

    name: str
    query: str
    domain: str = ""
    categories: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    description: str = ""

    @property
    def has_rule(self) -> bool:
        return bool(self.categories)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "query": self.query, "domain": self.domain,
                               "description": self.description}  # fmt: skip
        if self.has_rule:
            out["rule"] = {"categories": list(self.categories)}
            if self.modalities:
                out["rule"]["modalities"] = list(self.modalities)
        return out


def parse_scenarios(path: Path, raw: Any) -> tuple[Scenario, ...]:
    """``scenarios.json``'s parsed JSON as scenarios; every wrong shape names the file and entry."""
    items = entries(path, raw, SHAPE, value_key="query")
    out = []
    for where, item in items:
        warn_unknown_keys(path, where, item, KEYS)
        name = text_field(path, where, item, "name", required=True)
        check_name(name, path, entry=where)  # it names benchmarks/<name>.parquet and run folders
        query = text_field(path, where, item, "query", required=True)
        domain = text_field(path, where, item, "domain", required=False)
        description = text_field(path, where, item, "description", required=False)
        rule = item.get("rule")
        categories: tuple[str, ...] = ()
        modalities: tuple[str, ...] = ()
        if rule is not None:
            if not isinstance(rule, dict):
                raise DataError(path, f"'rule' is {json_type(rule)}", entry=where,
                                expected='an object such as {"categories": ["takeout"]}, or no rule')  # fmt: skip
            warn_unknown_keys(path, f"{where} rule", rule, RULE_KEYS)
            categories = string_list(path, where, rule, "categories")
            modalities = string_list(path, where, rule, "modalities")
            if not categories:
                raise DataError(path, "'rule' names no categories", entry=where,
                                expected="rule.categories: the event categories that make a user positive")  # fmt: skip
        out.append(Scenario(name, query, domain, categories, modalities, description))
    check_unique(path, [(w, s.name) for (w, _), s in zip(items, out)], "scenario")
    return tuple(out)


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Read the ``scenarios.json`` a build wrote into its data set (the raw folder's is read by
    :class:`~data_modules.contract.inputs.RawInputs`)."""
    path = Path(path)
    raw = read_json_file(path, SHAPE)
    if isinstance(raw, list):  # builds before the contract wrote a scenario without a rule so
        raw = [{k: v for k, v in s.items() if not (k == "rule" and v == {"categories": []})}
               if isinstance(s, dict) else s for s in raw]  # fmt: skip
    return list(parse_scenarios(path, raw))


def save_scenarios(path: str | Path, scenarios: list[Scenario] | tuple[Scenario, ...]) -> None:
    from data_modules.util.atomic import write_json

    write_json(path, [s.to_json() for s in scenarios])
