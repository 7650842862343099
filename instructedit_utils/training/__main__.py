"""``python -m instructedit_utils.training`` (e.g. under ``accelerate launch``): :func:`.cli.main`."""
from .cli import main

raise SystemExit(main())
