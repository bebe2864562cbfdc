"""`mailroute dashboard [--port P] [--host H]`: the ops dashboard from the files alone (no Ray, no routing server).

It reads the home folder (`--home`), the event log the serving config names and the configs (`--config-dir`), and
serves the same page the running app serves at `/dashboard`. The entry point adds it as a top-level command.
"""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_PORT = 8050


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0 for every interface)")] = "127.0.0.1",
) -> None:
    """Serve the ops dashboard (experiment, report, drift, every component's logs) from the files alone."""
    from monitoring.dashboard.data import DashboardSources
    from monitoring.dashboard.routes import serve
    from serving.cli import options

    sources = DashboardSources.from_files(options(ctx).resolve_home())
    if sources.tokens is not None and sources.tokens.enabled:
        sources.secret()  # a salt that cannot be had (a shared store, none set) is a one-line error now, not at sign-in
    print(f"mailroute dashboard at http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/dashboard")
    serve(sources, host=host, port=port)
