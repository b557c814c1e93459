"""The READMEs link equations to the lines that compute them: every [`name`](file#Lnn) must land on name's def or class.

Line anchors drift whenever code above them moves, so this checks each one a README writes with a code name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("projects/*/README.md"))]
LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\(([^)#\s]+\.py)#L(\d+)\)")


def definition(name: str) -> re.Pattern[str]:
    """A line that defines ``name`` (its last dotted part): def, class, or an assignment at the line's start."""
    short = re.escape(name.split(".")[-1])
    return re.compile(rf"^\s*(?:async\s+def|def|class)\s+{short}\b|^\s*{short}\s*(?::[^=]*)?=")


def broken_links(readme: Path) -> list[str]:
    broken = []
    for name, path, line in LINK.findall(readme.read_text()):
        target = readme.parent / path
        if not target.is_file():
            broken.append(f"{name} -> {path}: no such file")
            continue
        lines = target.read_text().splitlines()
        number = int(line)
        if not (number <= len(lines) and definition(name).search(lines[number - 1])):
            found = [i + 1 for i, text in enumerate(lines) if definition(name).search(text)]
            broken.append(f"{name} -> {path}#L{number}, defined at {found or 'no line'}")
    return broken


@pytest.mark.parametrize(
    "readme", [p for p in READMES if p.is_file()], ids=lambda p: p.parent.name if p.parent != ROOT else "root"
)
def test_every_code_link_lands_on_its_definition(readme: Path) -> None:
    assert broken_links(readme) == []


def test_a_moved_definition_is_reported(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("import torch\n\n\ndef loss(x):\n    return x\n")
    readme = tmp_path / "README.md"
    readme.write_text("[`loss`](code.py#L4) and [`loss`](code.py#L2)")
    assert broken_links(readme) == ["loss -> code.py#L2, defined at [4]"]
