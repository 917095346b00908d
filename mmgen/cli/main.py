"""The ``mmgen`` application: built-in commands plus the commands plugins add."""

from __future__ import annotations

import typer

from mmgen import __version__
from mmgen.cli.bench import bench
from mmgen.cli.classifiers import classifiers_app
from mmgen.cli.common import OneLineErrorsGroup, forget_warnings, load_plugins, one_line_warnings, plugin_warnings
from mmgen.cli.config_cmd import config_app, validate
from mmgen.cli.evaluate import evaluate
from mmgen.cli.plugins_cmd import plugins
from mmgen.cli.sample import sample
from mmgen.cli.train import train
from mmgen.plugins import add_commands


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmgen {__version__}")
        raise typer.Exit()


def create_app(with_plugin_commands: bool = True) -> typer.Typer:
    """Build the Typer app; plugins add commands through the ``register_commands`` hook."""
    app = typer.Typer(
        name="mmgen",
        cls=OneLineErrorsGroup,
        help="Multimodal generative models with latent EBM priors and Langevin inference.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
        """mmgen: train, sample and evaluate multimodal generative models assembled from plugins."""

    app.command()(train)
    app.command()(sample)
    app.command()(evaluate)
    app.command()(bench)
    app.command()(plugins)
    app.command()(validate)
    app.add_typer(config_app, name="config")
    app.add_typer(classifiers_app, name="classifiers")
    forget_warnings()
    if with_plugin_commands:
        loaded = load_plugins()
        with plugin_warnings():
            add_commands(loaded, app)
    return app


def main() -> None:
    """Console-script entry point."""
    one_line_warnings()
    create_app()()


if __name__ == "__main__":
    main()
