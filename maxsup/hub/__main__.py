"""``python -m maxsup.hub ...`` (see :mod:`maxsup.hub.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
