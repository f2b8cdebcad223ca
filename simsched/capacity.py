"""Entry point of ``python -m simsched.capacity``; the command lives in ``simsched.app.capacity``
and the search itself in ``simsched.capacity_search``."""
from simsched.app.capacity import cli

if __name__ == "__main__":
    cli()
