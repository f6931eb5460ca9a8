"""``python -m lightning_plugins``: the ``lightning-plugins`` command."""

from lightning_plugins.cli import command

command()
