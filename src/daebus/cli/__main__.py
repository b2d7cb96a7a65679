"""``python -m daebus.cli``: the ``daebus`` command."""

from . import main

main()
