"""The `mailroute monitor` group: drift and quality monitoring of the event log.

Empty for now: `monitor run` and `monitor schedule` are added here (`@app.command("run", help=...)`), and the entry
point already lists the group. Commands import Evidently and pandas in their bodies, which keeps `mailroute --help`
fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="drift and quality monitoring")
