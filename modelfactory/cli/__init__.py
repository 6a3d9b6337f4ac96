"""`mf`: the command line, one module per command group. Commands parse and print; what they do lives in the
layers, reached through one `Backend` (backend.py): this machine's database, or the control plane with `--server`,
with the same typed results (and `--json`) either way."""

from __future__ import annotations

import os

import typer

from ..errors import MFError
from . import data, label, models, orders, pool, servers  # noqa: F401 (each registers its commands)
from .common import app, err

__all__ = ["app", "main"]


def main() -> None:
    """The `mf` entry point: a clear one-line error (exit 2, 3 for missed targets), click's usage errors (exit 2),
    never a traceback for a problem the user can fix."""
    os.umask(0o077)  # what the platform writes under MF_HOME (and anywhere) is private to its user
    try:  # Typer >= 0.2x raises the exceptions of the copy of click it vendors, not click's own
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - an older Typer, over click itself
        from click import exceptions as click_errors

    try:
        app(standalone_mode=False)
    except MFError as e:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(e.exit_code) from None
    except (typer.Abort, getattr(click_errors, "Abort", typer.Abort)):
        err.print("[yellow]interrupted[/]: finished stages are kept; run the same command again to resume")
        raise SystemExit(130) from None
    except click_errors.UsageError as e:
        # A missing argument, an unknown option, a value of the wrong type: click's usage line, a hint and the
        # problem (or the help, for a group run without a command), exit 2 - never a traceback.
        e.show()
        raise SystemExit(e.exit_code) from None
    except click_errors.ClickException as e:
        err.print(f"[red]error:[/] {e.format_message()}")
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished stages are kept; run the same command again to resume")
        raise SystemExit(130) from None
