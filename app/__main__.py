"""``python -m app`` runs the tgalore command line."""

from app.cli import cli_main

cli_main()
