"""Bash completion for the console script, written from its own argparse parser."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from pathlib import Path

# The shell function's name; bash needs one per completed program.
_FUNCTION = "_flag_scheduler_complete"


def bash_script(parser: argparse.ArgumentParser, program: str) -> str:
    """A bash script that completes `program`'s commands, options and option values (choices,
    or file names for options that take a path), for `source <(flag-scheduler completion)`."""
    commands, words = [], []
    # What to offer after an option, by the (command, option) patterns it applies to.
    values: dict[str, list[str]] = {}
    for path, command in _parsers(parser):
        words.append(f"        {_pattern(path)}) words={shlex.quote(' '.join(_words(command)))} ;;")
        for action in command._actions:
            for option in action.option_strings:
                offer = _value_offer(action)
                if offer is not None:
                    where = shlex.quote(f"{''.join(f'/{word}' for word in path)} {option}")
                    values.setdefault(offer, []).append(where)
        if path:
            commands.append(_pattern(path))
    return "\n".join(
        [
            f"{_FUNCTION}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    local path="" word words i',
            "    # The command so far: the words naming a command, one level after another.",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        word="${COMP_WORDS[i]}"',
            f'        case "$path/$word" in {"|".join(commands)}) path="$path/$word" ;; esac',
            "    done",
            '    case "$path $prev" in',
            *(f"        {'|'.join(where)}) {offer}; return ;;" for offer, where in values.items()),
            "    esac",
            '    case "$path" in',
            *words,
            "    esac",
            '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            "}",
            f"complete -F {_FUNCTION} {shlex.quote(program)}",
            "",
        ]
    )


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every command's parser below it, each with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _parsers(command, (*path, name))


def _pattern(path: tuple[str, ...]) -> str:
    """A command's words as the shell function's `path` holds them: "/schedules/list"."""
    return shlex.quote("".join(f"/{word}" for word in path))


def _words(command: argparse.ArgumentParser) -> list[str]:
    """What may come next after a command: its subcommands, then its options."""
    words: list[str] = []
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            words += action.choices
    for action in command._actions:
        words += action.option_strings
    return words


def _value_offer(action: argparse.Action) -> str | None:
    """What completes the value of `action`'s option, if it takes a value."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        choices = shlex.quote(" ".join(str(choice) for choice in action.choices))
        return f'COMPREPLY=($(compgen -W {choices} -- "$cur"))'
    if action.type is Path:
        return 'COMPREPLY=($(compgen -f -- "$cur"))'
    if action.nargs != 0:
        # A value only the user knows (a key, a time, a number): offer nothing, not options.
        return "COMPREPLY=()"
    return None
