"""``python -m snapworker``: the same as the ``snapworker`` command."""

from snapworker.tools.cli import main

raise SystemExit(main())
