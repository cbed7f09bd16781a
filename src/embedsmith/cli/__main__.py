"""``python -m embedsmith.cli``: the same as the ``embedsmith`` command."""

from . import main

main()
