"""``python -m app`` runs the tgalore command line."""

from app.cli import main

main()
