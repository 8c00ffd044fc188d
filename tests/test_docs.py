"""Every `qanchor` command in the README's and the docs' bash blocks parses (through `--print_config`,
or `--help` as written), so the documentation cannot rot."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT
from tests.test_front_door import _main

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_commands(text: str) -> list[str]:
    """`qanchor ...` lines of ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("qanchor "):
                commands.append(line)
    return commands


CASES = [(page, cmd) for page in PAGES for cmd in bash_commands(page.read_text())]


def test_the_readme_points_to_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert all(f"docs/{p.name}" in readme for p in PAGES[1:])
    assert len(PAGES) >= 7 and len(CASES) >= 20


@pytest.mark.parametrize("page, command", CASES, ids=[f"{p.name}:{c[:60]}" for p, c in CASES])
def test_documented_command_parses(page, command):
    argv = shlex.split(command, comments=True)[1:]
    if not any(a in ("--help", "-h") or a.startswith("--print_config") for a in argv):
        argv.append("--print_config")
    code, out = _main(*argv)
    assert code == 0, f"{page.name}: {command}"
    assert out.strip()


def layout_tree() -> dict[str, list[str]]:
    """docs/architecture.md's Layout tree: folder (relative to the repo) -> the modules it names."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Layout\n.*?```text\n(.*?)```", page, flags=re.S).group(1)
    tree: dict[str, list[str]] = {}
    top, current = "", ""
    for line in block.splitlines():
        folder = re.match(r"^(\s*)([a-z_]+)/\s*(.*)$", line)
        if folder:
            indent, name, rest = folder.groups()
            current = name if not indent else f"{top}/{name}"
            top = name if not indent else top
        else:
            rest = line.strip()
        tree.setdefault(current, []).extend(m.strip() for m in rest.split(",") if m.strip())
    return tree


def test_the_layout_names_every_module_and_only_modules_that_exist():
    tree = layout_tree()
    assert {"data_modules/contract", "data_modules/builder", "qanchor_pl/eval"} <= set(tree)
    for folder, modules in tree.items():
        missing = [m for m in modules if not (ROOT / folder / f"{m}.py").is_file()]
        assert not missing, f"docs/architecture.md names {folder}/{missing}, which do not exist"
        present = {p.stem for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        assert present == set(modules), (
            f"{folder}: modules not in docs/architecture.md: {sorted(present - set(modules))}"
        )
    for package in ("data_modules", "qanchor_pl"):  # every sub-package with modules is in the tree
        for init in (ROOT / package).glob("*/__init__.py"):
            folder = str(init.parent.relative_to(ROOT))
            assert folder in tree or not list(init.parent.glob("[!_]*.py")), folder
