"""``mmgen plugins``: every registered component and the plugin it came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mmgen.cli.common import load_plugins, out_console, plugin_warnings, user_errors
from mmgen.plugins import add_commands


@user_errors
def plugins(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List every registered component and every command plugins add: kind, name, plugin, version, summary."""
    loaded = load_plugins()
    rows = [{"kind": c.kind, "name": c.name, "plugin": c.plugin, "version": c.version, "summary": c.summary}
            for c in loaded.registry]
    # The commands plugins add, as `mmgen` itself gets them (on a scratch app: nothing runs).
    with plugin_warnings():
        commands = add_commands(loaded, typer.Typer())
    rows += [{"kind": "command", "name": name, "plugin": plugin, "version": loaded.versions.get(plugin, ""),
              "summary": summary} for plugin, name, summary in commands]
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
