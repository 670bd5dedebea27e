"""The command line's pure helpers: moving client options, suggestions, what a bare word
means, help, a bootstrap's progress and how `kvs status` and `kvs start` say it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kvs.cli import build_parser, main
from kvs.cli.forgiving import hoist_globals, looks_like_config, show_help, suggest
from kvs.cli.names import expand_scopes
from kvs.cli.ops import root_token_note, sync_progress_text
from kvs.sync.health import bootstrap_progress


def test_client_options_before_the_command_move_after_it() -> None:
    assert hoist_globals(["--url", "U", "get", "a"]) == ["get", "a", "--url", "U"]
    assert hoist_globals(["--url=U", "--json", "--token", "T", "token", "list"]) == [
        "token",
        "list",
        "--url=U",
        "--json",
        "--token",
        "T",
    ]
    assert hoist_globals(["--url", "U", "put", "k", "--", "-1"]) == [
        "put",
        "k",
        "--url",
        "U",
        "--",
        "-1",
    ]
    assert hoist_globals(["get", "a", "--url", "U"]) == ["get", "a", "--url", "U"]
    assert hoist_globals([]) == []


def test_suggestions_and_bare_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert suggest("gte", ["get", "put", "rm"]) == " (did you mean 'get'?)"
    assert suggest("zzzz", ["get", "put"]) == ""
    monkeypatch.chdir(tmp_path)
    assert looks_like_config("config.yaml") and looks_like_config("dir/conf")
    assert not looks_like_config("gte")
    (tmp_path / "myconf").write_text("")
    assert looks_like_config("myconf")


def test_help_version_and_unknown_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_help(build_parser(), ["user", "show"]) == 0
    assert "NAME|UUID" in capsys.readouterr().out
    assert show_help(build_parser(), ["usr"]) == 2
    assert "did you mean 'user'?" in capsys.readouterr().err
    assert main(["stauts"]) == 2
    assert "did you mean 'status'?" in capsys.readouterr().err
    assert main(["token", "create", "root", "--scoep", "read"]) == 2
    assert "unknown option '--scoep' (did you mean '--scope'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # known to some command, not to this one
        main(["get", "k", "--yes"])
    assert exc.value.code == 2 and "unrecognized arguments: --yes" in capsys.readouterr().err


def test_scope_presets_expand_to_the_documented_lists() -> None:
    from kvs.auth.permissions import ALL_SCOPES

    assert expand_scopes(["admin"]) == sorted(ALL_SCOPES) == expand_scopes(["all"])
    assert expand_scopes(["read-write"]) == ["delete", "read", "write"]
    assert expand_scopes(["read", "read-write", "admin:audit:read"]) == [
        "read",
        "delete",
        "write",
        "admin:audit:read",
    ]


def test_bootstrap_progress_and_its_text() -> None:
    progress = bootstrap_progress(3000, 10_000, started=100.0, start_keys=1000, now=110.0)
    assert progress == {
        "keys_received": 2000,
        "keys_expected": 9000,
        "keys_per_s": 200.0,
        "eta_s": 35.0,
    }
    none_yet = bootstrap_progress(0, 5000, started=5.0, start_keys=0, now=5.0)
    assert none_yet["keys_received"] == 0 and none_yet["eta_s"] is None
    assert sync_progress_text(progress) == (
        "syncing: 2,000 of 9,000 keys received (200 keys/s, about 35 s left)"
    )
    assert sync_progress_text(none_yet) == "syncing: 0 of 5,000 keys received (0 keys/s)"
    assert sync_progress_text(None) == "syncing"


def test_root_token_note(tmp_path: Path) -> None:
    path = tmp_path / "root.token"
    assert "no root token in" in root_token_note(path) and "kvs admin recover" in root_token_note(
        path
    )
    path.write_text("secret")
    note = root_token_note(path)
    assert note == f'root token: {path} (export KVS_TOKEN="$(cat {path})")'
    assert "secret" not in note


def test_the_documented_presets_are_the_ones_expanded() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[2]
        for line in reference.splitlines()
        if line.startswith("| `admin` (or `all`)") or line.startswith("| `read")
    }
    for preset, cell in rows.items():
        name = preset.split("`")[1]
        assert sorted(cell.replace("`", "").replace(" ", "").split(",")) == sorted(
            expand_scopes([name])
        ), preset
    assert len(rows) == 3


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_silent_in_a_pipe() -> None:
    from kvs.cli.progress import Progress

    terminal = _Terminal()
    bar = Progress("loading", 200, stream=terminal)
    bar.advance(100)
    bar.finish()
    text = terminal.getvalue()
    assert text.startswith("\rloading [") and " 50% 100/200 (" in text and text.endswith("\n")
    pipe = io.StringIO()
    quiet = Progress("loading", 200, stream=pipe)
    quiet.advance(200)
    quiet.finish()
    assert pipe.getvalue() == ""
