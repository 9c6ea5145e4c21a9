"""Where the embedded database lives: one per-user folder, overridable."""

from __future__ import annotations

from pathlib import Path

from flag_scheduler_cli.local import data_folder


def test_the_data_folder_variable_and_option_override_it(tmp_path: Path) -> None:
    home = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert data_folder(home) == tmp_path / "xdg" / "flag-scheduler" / "pgdata"
    chosen = {**home, "FLAG_SCHEDULER_DATA_DIR": str(tmp_path / "mine")}
    assert data_folder(chosen) == tmp_path / "mine"
    assert data_folder(chosen, tmp_path / "option") == tmp_path / "option"
    # A relative XDG_DATA_HOME is ignored (the XDG spec), not taken from the current folder.
    assert data_folder({"XDG_DATA_HOME": "rel"}) == (
        Path.home() / ".local" / "share" / "flag-scheduler" / "pgdata"
    )
