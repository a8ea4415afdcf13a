"""The ``forge`` command.

Every verb except the daemons (``server``, ``controllers``, ``agent``, ``up``) talks to the API
at ``FORGE_URL`` with ``FORGE_ADMIN_TOKEN``. When those are unset, the CLI looks in the data
dir ``forge up`` wrote (``api-url``, ``admin-token``). Failures print one line to stderr and
exit non-zero; never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from forge import __version__
from forge.config import default_data_dir
from forge.errors import ForgeError

if TYPE_CHECKING:
    from forge.client import ForgeClient

DEFAULT_URL = "http://127.0.0.1:8080"


class Ctx:
    """Lazily built API client, shared by the verbs of one invocation."""

    def __init__(self) -> None:
        self._client: ForgeClient | None = None

    @property
    def client(self) -> ForgeClient:
        if self._client is None:
            from forge.client import ForgeClient

            url, source = locate()
            self._client = ForgeClient(url, admin_token(), unreachable_hint=unreachable_hint(url, source))
        return self._client


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


DISCOVERY = (
    "How the CLI finds its install: the API URL is $FORGE_URL, else the api-url file that forge "
    "up writes in its data dir, else http://127.0.0.1:8080; the token is $FORGE_ADMIN_TOKEN, else "
    "the data dir's admin-token. The data dir is $FORGE_DATA_DIR, else /var/lib/forge as root, "
    "else ~/.local/share/forge. For an install started with forge up --data-dir DIR, set "
    "FORGE_DATA_DIR=DIR; for a remote one, FORGE_URL and FORGE_ADMIN_TOKEN."
)


def locate() -> tuple[str, str]:
    """The API URL the CLI uses and where it came from (for messages)."""
    if os.environ.get("FORGE_URL"):
        return os.environ["FORGE_URL"], "from $FORGE_URL"
    path = default_data_dir() / "api-url"
    found = _read(path)
    if found:
        return found, f"from {path} (written by forge up)"
    return DEFAULT_URL, f"the default: $FORGE_URL is unset and {path} does not exist"


def unreachable_hint(url: str, source: str) -> str:
    return (
        f"{url} is {source}. Start Forge with forge up, or point the CLI at a running install: "
        "FORGE_DATA_DIR=DIR (the --data-dir it was started with), or FORGE_URL=http://HOST:PORT "
        "with FORGE_ADMIN_TOKEN=TOKEN."
    )


def api_url() -> str:
    return locate()[0]


def admin_token() -> str:
    return os.environ.get("FORGE_ADMIN_TOKEN") or _read(default_data_dir() / "admin-token")


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


class ListByDefault(click.Group):
    """A verb group whose bare form lists: ``forge domains APP`` is ``forge domains list APP``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands and "list" in self.commands:
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=DISCOVERY
)
@click.version_option(__version__, "--version", prog_name="forge")
def cli() -> None:
    """Forge: push to GitHub, get a live, health-checked app on your own servers."""


@cli.command()
def version() -> None:
    """Print the Forge version."""
    click.echo(f"forge {__version__}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(forge completion bash)"."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    click.echo(comp_cls(cli, {}, "forge", "_FORGE_COMPLETE").source())


def main() -> None:
    from forge.cli import (  # noqa: F401  (registers verbs)
        apps,
        daemons,
        domains,
        drains,
        github,
        metrics,
        nodes,
        notify,
        previews,
        ps,
        resources,
        restart,
        runs,
        secrets,
        store,
    )

    try:
        cli.main(prog_name="forge", standalone_mode=False)
    except click.UsageError as exc:  # one line and a hint, not the whole usage block
        click.echo(f"error: {exc.format_message()}", err=True)
        if exc.ctx is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except ForgeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        click.echo(
            f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", err=True
        )
        sys.exit(1)
