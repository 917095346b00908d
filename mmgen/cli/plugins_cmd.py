"""``mmgen plugins``: every registered component and the plugin it came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mmgen.cli.common import load_plugins, out_console, user_errors


@user_errors
def plugins(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List every registered component: kind, name, plugin, version, summary."""
    loaded = load_plugins()
    rows = [{"kind": c.kind, "name": c.name, "plugin": c.plugin, "version": c.version, "summary": c.summary}
            for c in loaded.registry]
    if as_json:
        typer.echo(json.dumps({"components": rows, "broken_plugins": loaded.broken}, indent=2))
        return
    table = Table(title="mmgen components")
    for col in ("kind", "name", "plugin", "version", "summary"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    out_console.print(table)
    for name, why in loaded.broken.items():
        out_console.print(f"[yellow]broken plugin {name}:[/] {why}")
