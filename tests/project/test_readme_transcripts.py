"""The README's sessions are what the scripts in scripts/ print today: each script is run and
its output compared, command by command, with the README's block (ids, times, durations and
log locations blanked; within one command's answer the order of lines is free, since rows
created in the same second may list either way)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

BLANKS = [
    (r"--port \d+|127\.0\.0\.1:\d+", "<port>"),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>"),
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}|,\d+\+0000)?", "<t>"),
    (r"\b\d{2}:\d{2}(:\d{2})?\b", "<t>"),
    (r"\b(\d+h)?(\d+m)?\d+s\b", "<d>"),
    (r"\d+\.\d+", "<n>"),
    (r'"location":"[^"]*"', '"location":"<l>"'),
]


def _blank(text: str) -> str:
    for pattern, replacement in BLANKS:
        text = re.sub(pattern, replacement, text)
    return text


def _sections(text: str) -> list[tuple[str, Counter[str]]]:
    """(command, its answer's lines) for each `$ ` line, blanked."""
    sections: list[tuple[str, Counter[str]]] = []
    for line in _blank(text).splitlines():
        if line.startswith("$ ") or not sections:
            sections.append((line, Counter()))
        elif line.strip():
            # (the comma after a list's element depends on its place in the list)
            sections[-1][1][line.rstrip(",")] += 1
    return sections


def _readme_block(printed: str) -> str:
    """The README's fenced block of the session `printed`: the one with the same commands,
    else the first that begins like it (for the error message)."""
    blocks: list[str] = []
    block: list[str] | None = None
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None and line.startswith("```"):
            block = []
        elif block is not None and line == "```":
            blocks.append("\n".join(block))
            block = None
        elif block is not None:
            block.append(line)
    first = _blank(printed.splitlines()[0])
    alike = [b for b in blocks if b and _blank(b.splitlines()[0]) == first]
    assert alike, f"no README block begins with {first!r}"
    commands = [command for command, _ in _sections(printed)]
    same = [b for b in alike if [command for command, _ in _sections(b)] == commands]
    return (same or alike)[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("script", "needs"),
    [
        (("operate-transcript.sh",), ()),
        (("ramps-transcript.sh",), ()),
        (("api-transcript.sh",), ("curl", "openssl")),
        (("api-transcript.sh", "ramps"), ("curl", "openssl")),
    ],
    ids=["operate", "ramps", "api", "api-ramps"],
)
def test_the_readme_session_is_what_its_script_prints(
    script: tuple[str, ...], needs: tuple[str, ...]
) -> None:
    missing = [tool for tool in needs if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{script[0]} needs {', '.join(missing)}")
    printed = subprocess.run(
        ["bash", str(ROOT / "scripts" / script[0]), *script[1:]],
        env={**os.environ, "PORT": str(_free_port())},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    shown = _readme_block(printed.stdout)
    got, want = _sections(printed.stdout), _sections(shown)
    assert [command for command, _ in got] == [command for command, _ in want]
    for (command, lines), (_, documented) in zip(got, want, strict=True):
        assert lines == documented, f"{command}: run `scripts/{' '.join(script)}` again"
