"""``python -m embedsmith``: the same as the ``embedsmith`` command."""

from .cli import main

main()
