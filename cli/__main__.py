"""``python -m cli``: the ``leukolab`` command without the installed console script."""

from cli.main import main

main()
