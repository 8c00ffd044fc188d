"""Downstream scenarios: a name, the natural-language query that anchors it, a domain, a label rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from data_modules.contract.names import check_name
from data_modules.util.atomic import read_json
from data_modules.util.errors import DataError


@dataclass(frozen=True)
class Scenario:
    """A binary scenario. ``categories``: a user is positive if they trigger at least one event of
    these categories (restricted to ``modalities`` when given) in the prediction window."""

    name: str
    query: str
    domain: str
    categories: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    description: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        rule = {"categories": list(self.categories)}
        if self.modalities:
            rule["modalities"] = list(self.modalities)
        return {
            "name": d["name"],
            "query": d["query"],
            "domain": d["domain"],
            "description": d["description"],
            "rule": rule,
        }


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Read ``scenarios.json``: a list of objects, or a mapping name -> object."""
    path = Path(path)
    raw = read_json(path)
    if isinstance(raw, dict):
        raw = [{"name": name, **body} for name, body in raw.items()]
    if not isinstance(raw, list):
        raise DataError(path, "expected a list of scenarios or a mapping name -> scenario")
    scenarios, seen = [], set()
    for i, item in enumerate(raw):
        where = f"{item.get('name', '?')} (entry {i})" if isinstance(item, dict) else f"entry {i}"
        if not isinstance(item, dict):
            raise DataError(path, "scenario is not an object", row=where)
        for key in ("name", "query"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError(path, f"scenario has no '{key}'", row=where, expected="a non-empty string")
        check_name(item["name"], path, row=where)  # it names benchmarks/<name>.parquet and run folders
        if item["name"] in seen:
            raise DataError(path, "duplicate scenario name", row=where)
        seen.add(item["name"])
        rule = item.get("rule") or {}
        categories = rule.get("categories", [])
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise DataError(path, "rule.categories must be a list of strings", row=where)
        scenarios.append(
            Scenario(
                name=item["name"],
                query=item["query"],
                domain=item.get("domain", ""),
                categories=tuple(categories),
                modalities=tuple(rule.get("modalities", [])),
                description=item.get("description", ""),
            )
        )
    return scenarios


def save_scenarios(path: str | Path, scenarios: list[Scenario]) -> None:
    from data_modules.util.atomic import write_json

    write_json(path, [s.to_json() for s in scenarios])
