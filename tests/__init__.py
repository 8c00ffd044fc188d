"""The test suite."""

from pathlib import Path

#: Figures recorded once and read back by tests (see each file's "recorded" entry).
RECORDED = Path(__file__).parent / "recorded"
