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
