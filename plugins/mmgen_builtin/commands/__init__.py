"""Command-line commands the built-in plugin adds to ``mmgen`` (through ``register_commands``)."""
