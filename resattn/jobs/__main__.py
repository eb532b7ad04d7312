"""``python -m resattn.jobs``: the command line of :mod:`resattn.jobs.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
