"""``python -m instructedit_utils.experiments``: :func:`.cli.main`."""
from .cli import main

raise SystemExit(main())
