"""``python -m cfwf_async``: the same as the ``cfwf`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
