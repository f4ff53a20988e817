"""``python -m training.data.cache``: :func:`training.data.cache.cli.main`."""

from training.data.cache.cli import main

raise SystemExit(main())
