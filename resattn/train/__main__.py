"""``python -m resattn.train``."""

from .cli import main

raise SystemExit(main())
