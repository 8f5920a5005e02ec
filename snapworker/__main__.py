"""``python -m snapworker``: the same as the ``snapworker`` command."""

from snapworker.cli import main

raise SystemExit(main())
