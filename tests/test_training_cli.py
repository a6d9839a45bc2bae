"""`python -m training`: every subcommand's --help works and says something, in a fresh process like a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.__main__ import MODULE_COMMANDS, _module_doc, main

OWN = ["dataset", "dataset folder", "dataset csv", "dataset 4q", "dataset emotify", "dataset spotify", "spotify-predict"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_subcommand() -> None:
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in ["dataset", "spotify-predict", *MODULE_COMMANDS]:
        assert f"\n    {name}" in r.stdout, f"{name} missing from --help"
    assert "typical workflow" in r.stdout


@pytest.mark.parametrize("command", OWN)
def test_own_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m training " + command)
    assert len(out) > 300


def test_spotify_help_explains_previews_and_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dataset", "spotify", "--help"])
    out = capsys.readouterr().out
    assert "27 November 2024" in out and "SPOTIPY_CLIENT_ID" in out and "Retry-After" in out


@pytest.mark.parametrize("command", sorted(MODULE_COMMANDS))
def test_module_subcommand_help_or_clear_unavailable_message(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each module subcommand either shows its own help (module present) or says it is not available yet."""
    try:
        rc = main([command, "--help"])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    if _module_doc(MODULE_COMMANDS[command][0]) is None:
        assert rc == 2 and "not available yet" in err
    else:
        assert rc == 0, err
        assert out.startswith(f"usage: python -m training {command}")


def test_no_subcommand_is_an_error() -> None:
    r = run_cli()
    assert r.returncode == 2 and "SUBCOMMAND" in r.stderr


@pytest.mark.parametrize("command", sorted(MODULE_COMMANDS))
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    """Each option of each subcommand explains itself and says its default in --help."""
    import argparse

    from training.__main__ import build_parser

    def options(p: argparse.ArgumentParser):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    yield from options(sp)
            elif a.option_strings and a.dest != "help":
                yield p, a

    parser = build_parser(command)
    for p, a in options(parser):
        shown = p._get_formatter()._get_help_string(a)
        assert a.help and "default" in shown.lower(), f"{command} {a.option_strings}: no help or no default shown"


def test_defaults_never_point_into_site_packages(tmp_path, monkeypatch) -> None:
    """An installed copy (no pyproject.toml beside the package) writes under the current directory."""
    import training.manifest as manifest

    monkeypatch.setattr(manifest, "_SOURCE", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert manifest.project_root() == tmp_path
