"""`python -m stemops ...` is the `stemworker` command."""

from stemops.cli import main

raise SystemExit(main())
