"""`mailroute ...`: the entry point that assembles every package's commands into one command line.

Each package owns its commands: `training/cli.py` (data, train, evaluate), `serving/commands.py` (serve, models,
replay, log), `serving/privacy/cli.py` (privacy), `experiments/cli.py` (experiment) and `monitoring/cli.py`
(monitor). This module holds what they share: the global options (`mailroute [-v] [--home H] [--config-dir D]
<command> ...`), read by commands through `options(ctx)`, and the one place where a failure becomes one line on
stderr and an exit code: 2 for usage and config errors, 1 for everything else, 130 on Ctrl-C. Commands import heavy
modules (torch, ray, pandas) in their bodies, so `mailroute --help` and `mailroute models list` start fast, and
serving's runtime modules never import `training`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main

from serving.config import ConfigError, Home

log = logging.getLogger("mailroute")
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Their Python loggers stay at ERROR without -v; what their processes print stays in Ray's log files.
FRAMEWORK_LOGGERS = ("ray", "ray.train", "ray.data", "ray.tune", "ray.serve")


@dataclass
class GlobalOptions:
    """The options given before the command; `main` makes one, the group's callback fills it in."""

    home: Path | None = None
    verbose: bool = False

    def resolve_home(self) -> Home:
        return Home.resolve(self.home)


def options(ctx: typer.Context) -> GlobalOptions:
    return ctx.find_object(GlobalOptions) or GlobalOptions()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _global_options(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="log progress, Ray's own output and tracebacks to stderr")
    ] = False,
    home: Annotated[
        Path | None, typer.Option(help="state folder (default: $MAILROUTE_HOME or ./.mailroute)", show_default=False)
    ] = None,
    config_dir: Annotated[
        Path | None, typer.Option(help="folder of the YAML configs (default: ./configs)", show_default=False)
    ] = None,
) -> None:
    """Route customer emails to specialist queues."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for name in FRAMEWORK_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    if config_dir:
        os.environ["MAILROUTE_CONFIG_DIR"] = str(config_dir)
    given = ctx.ensure_object(GlobalOptions)
    given.home, given.verbose = home, verbose


def build_app() -> typer.Typer:
    """The whole command line. Each package's Typer app is imported here, not at module level, so that the package
    modules can import this one's shared pieces."""
    from experiments.analyze_cli import app as analyze_app
    from experiments.cli import app as experiment_app
    from experiments.rollout.cli import app as rollout_app
    from experiments.rollout.cli import rollback
    from monitoring.cli import app as monitor_app
    from monitoring.dashboard.cli import dashboard
    from monitoring.demo.run import demo
    from serving.commands import app as serving_app
    from serving.privacy.cli import app as privacy_app
    from training.cli import app as training_app
    from training.labels.cli import app as label_app
    from training.retrain.cli import retrain

    app = typer.Typer(
        name="mailroute",
        callback=_global_options,
        add_completion=False,
        rich_markup_mode=None,  # plain help text, as before; Rich's boxes label every flag `<bool>`
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.add_typer(training_app)  # data, train, evaluate: merged into the top level
    app.add_typer(serving_app)  # serve, models, replay, log
    app.add_typer(experiment_app, name="experiment")
    app.add_typer(analyze_app, name="analyze")
    app.command("retrain")(retrain)  # from the feedback in the event log, gated against the champion
    app.add_typer(rollout_app, name="rollout")
    app.command("rollback")(rollback)  # the rollout's, or an arm's previous champion: one command, one meaning
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(label_app, name="label")
    app.add_typer(privacy_app, name="privacy")  # a user's records (export, delete), text retention
    # Top-level commands that belong to no group are added here from their package.
    app.command("dashboard")(dashboard)  # the ops page from the files alone (monitoring/dashboard)
    app.command("demo")(demo)  # the whole loop on a fast clock (monitoring/demo)
    return app


def _usage_message(err: typer.TyperException) -> str:
    """Click's message ("Missing option '--data'.") as one line after the command it is about."""
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "mailroute"
    message = " ".join(err.format_message().split()).rstrip(".")
    for pydantic, plain in (("Value error, ", ""), ("Input should be a valid", "expected a valid"),
                            ("Input should be", "expected")):  # fmt: skip
        message = message.replace(pydantic, plain)
    return f"{where}: {message[:1].lower()}{message[1:]}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from serving.client import MailrouteError
    from serving.models.registry import RegistryError

    return (RegistryError, ValueError, OSError, MailrouteError)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    command = typer.main.get_command(build_app())
    given = GlobalOptions()
    # Parsing and invoking here rather than through Click's `main`: its standalone mode prints a multi-line usage
    # block, and turns Ctrl-C and errors into exit codes before they reach the mapping below.
    try:
        with command.make_context("mailroute", list(sys.argv[1:] if argv is None else argv), obj=given) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as err:  # --help, or a command that ends early
        return err.exit_code
    except typer.TyperException as err:  # the parser's: usage errors carry exit code 2
        print(_usage_message(err), file=sys.stderr)
        return err.exit_code
    except ConfigError as err:
        print(f"mailroute: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mailroute: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if isinstance(err, _expected_errors()):
            if given.verbose:
                log.exception("failed")
            print(f"mailroute: error: {err}", file=sys.stderr)
        else:  # a bug: still one line for the user, the traceback with -v
            if given.verbose:
                log.exception("internal error")
            print(f"mailroute: internal error: {type(err).__name__}: {err} (run with -v for details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
