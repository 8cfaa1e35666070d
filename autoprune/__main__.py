"""`python -m autoprune` runs the command line."""

from autoprune.cli import main

raise SystemExit(main())
