"""Usage errors never show a traceback: every command and subcommand of `mf`, found by walking the Typer app, run
without its required arguments, with an unknown option and with a wrongly typed value, prints click's usage line
and one `Error:` line naming the problem, and exits 2. Runs `main()` in-process (the entry point `mf` calls)."""

from __future__ import annotations

import sys
import typing

import pytest
import typer.main

from modelfactory.cli import app, main

from .conftest import run_mf

ROOT = typer.main.get_command(app)


def _walk(cmd, path=()):
    yield path, cmd
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(ROOT))
GROUPS = [(path, cmd) for path, cmd in COMMANDS if getattr(cmd, "commands", None)]
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not getattr(cmd, "commands", None)]


def _ids(items):
    return [" ".join(path) or "mf" for path, _ in items]


def _required(cmd) -> list:
    return [p for p in cmd.params if p.required]


def _scalar(param):
    """int or float when the parameter takes one (also `int | None`), else None."""
    ann = param.type_descriptor.annotation
    candidates = [ann, *typing.get_args(ann)]
    for kind in (int, float):
        if kind in candidates and not getattr(param, "is_flag", False):
            return kind
    return None


def _typed(cmd):
    """The first option (else argument) that takes an int or a float, or None."""
    options = [p for p in cmd.params if p.param_type_name == "option" and _scalar(p)]
    arguments = [p for p in cmd.params if p.param_type_name == "argument" and _scalar(p)]
    return (options or arguments or [None])[0]


def mf(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mf", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _assert_usage_error(code, out, err, *needles):
    text = out + err
    assert "Traceback" not in text, text
    assert code == 2, (code, text)
    assert err.startswith("Usage: "), err
    assert out == "", out
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err  # one clear message
    for needle in needles:
        assert needle in errors[0], err


def test_the_walk_finds_every_command():
    """Guard against a walk that silently finds nothing: the groups and the commands users know are there."""
    names = set(_ids(COMMANDS))
    assert {"data", "label", "order", "models", "tenants", "jobs"} <= names
    assert {"serve", "serve-llm", "predict", "models show", "order run", "order status", "jobs cancel",
            "tenants add", "label auto", "jobs submit"} <= names
    # most commands take something typed: the walk must reach them (serve --port, order status ORDER_ID, ...)
    assert sum(_typed(cmd) is not None for _, cmd in LEAVES) >= 15


@pytest.mark.parametrize("path,cmd", [c for c in LEAVES if _required(c[1])], ids=_ids([c for c in LEAVES
                                                                                      if _required(c[1])]))
def test_missing_argument(capsys, monkeypatch, path, cmd):
    code, out, err = mf(capsys, monkeypatch, *path)
    first = _required(cmd)[0]
    kind = "argument" if first.param_type_name == "argument" else "option"
    _assert_usage_error(code, out, err, f"Missing {kind}")
    assert f"mf {' '.join(path)}" in err.splitlines()[0] or " ".join(path) in err.splitlines()[0], err


@pytest.mark.parametrize("path,cmd", [c for c in COMMANDS if not c[1].context_settings.get("ignore_unknown_options")],
                         ids=_ids([c for c in COMMANDS if not c[1].context_settings.get("ignore_unknown_options")]))
def test_unknown_option(capsys, monkeypatch, path, cmd):
    code, out, err = mf(capsys, monkeypatch, *path, "--no-such-option")
    _assert_usage_error(code, out, err, "No such option: --no-such-option")


@pytest.mark.parametrize("path,cmd", [c for c in LEAVES if _typed(c[1])], ids=_ids([c for c in LEAVES if _typed(c[1])]))
def test_wrongly_typed_value(capsys, monkeypatch, path, cmd):
    param = _typed(cmd)
    args = [param.opts[0], "notanumber"] if param.param_type_name == "option" else ["notanumber"]
    code, out, err = mf(capsys, monkeypatch, *path, *args)
    _assert_usage_error(code, out, err, "Invalid value")
    assert (param.opts[0] if param.param_type_name == "option" else "'") in err


@pytest.mark.parametrize("path,cmd", GROUPS, ids=_ids(GROUPS))
def test_group_with_an_unknown_command(capsys, monkeypatch, path, cmd):
    code, out, err = mf(capsys, monkeypatch, *path, "no-such-command")
    _assert_usage_error(code, out, err, "No such command 'no-such-command'")


@pytest.mark.parametrize("path,cmd", GROUPS, ids=_ids(GROUPS))
def test_group_without_a_command_shows_its_help(capsys, monkeypatch, path, cmd):
    code, out, err = mf(capsys, monkeypatch, *path)
    assert code == 2 and "Traceback" not in out + err
    help_text = out + err  # Typer's rich help goes to stdout
    assert "Usage: " in help_text and "Commands" in help_text, help_text


def test_jobs_submit_passes_unknown_options_to_its_command_but_still_needs_a_tenant(capsys, monkeypatch):
    """`mf jobs submit -- CMD` takes unknown options as the command's: its own usage errors still exit 2."""
    code, out, err = mf(capsys, monkeypatch, "jobs", "submit", "--no-such-option")
    _assert_usage_error(code, out, err, "Missing option '--tenant'")


def test_the_installed_entry_point_exits_2_without_a_traceback():
    """The real process (not only main() in-process): `mf serve --port notanumber`."""
    proc = run_mf("serve", "--port", "notanumber", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Usage: " in proc.stderr and "Error: Invalid value for '--port'" in proc.stderr, proc.stderr
