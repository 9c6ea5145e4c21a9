"""Repository hygiene the README promises: no references outside it, no secrets committed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_refers_only_to_files_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme  # a reader of the repository alone cannot follow it
    for target in re.findall(r"\]\(([^)#\s]+)\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_every_code_block_of_the_readme_is_closed() -> None:
    """An unclosed fence turns the rest of the README inside out (code shows as text and
    text as code); every section heading must sit outside a code block."""
    inside = False
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        assert not (inside and line.startswith("## ")), f"README.md:{number} is inside a code block"
    assert not inside, "the README ends inside a code block"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_env_json_is_ignored() -> None:
    """`sam local invoke --env-vars env.json` holds a database password."""
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", "env.json"], cwd=ROOT, check=False
    )
    assert result.returncode == 0
