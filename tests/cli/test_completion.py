"""`flag-scheduler completion`: bash completes commands, options and option values."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from flag_scheduler_cli.cli import EXIT_OK, _parser, main
from flag_scheduler_cli.completion import bash_script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def script() -> str:
    return bash_script(_parser(), "flag-scheduler")


def _complete(script: str, line: str) -> list[str]:
    """What bash offers for the last word of `line` (empty when the line ends in a blank)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    probe = "\n".join(
        [
            script,
            f"COMP_WORDS=({' '.join(shlex.quote(word) for word in words)})",
            f"COMP_CWORD={len(words) - 1}",
            "_flag_scheduler_complete",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile"],
        input=probe,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [word for word in result.stdout.splitlines() if word]


def test_the_command_prints_the_script(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion"]) == EXIT_OK
    assert capsys.readouterr().out == script
    assert script.endswith("complete -F _flag_scheduler_complete flag-scheduler\n")


@pytest.mark.parametrize(
    ("line", "offered"),
    [
        # the commands, from their first letters
        ("flag-scheduler s", ["schedules", "status", "serve"]),
        # a command group's actions
        (
            "flag-scheduler schedules ",
            [
                "create",
                "list",
                "show",
                "retry",
                "cancel",
                "retry-failed",
                "preview",
                "-h",
                "--help",
            ],
        ),
        # a command's options, after its other words
        ("flag-scheduler flags create banner --e", ["--env", "--enable"]),
        # an option's choices
        ("flag-scheduler schedules list --status fa", ["failed_permanently", "failed"]),
        # an option whose value only the user knows: nothing, rather than options
        ("flag-scheduler schedules create --at ", []),
    ],
)
def test_bash_completes(script: str, line: str, offered: list[str]) -> None:
    assert _complete(script, line) == offered
