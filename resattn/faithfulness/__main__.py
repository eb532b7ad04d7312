"""``python -m resattn.faithfulness``: the command line of :mod:`resattn.faithfulness.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
