"""The ``mmgen`` command line (Typer + rich). One module per subcommand."""
