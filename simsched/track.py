"""Entry point of ``python -m simsched.track``; the command lives in ``simsched.app.track``."""
from simsched.app.track import cli

if __name__ == "__main__":
    cli()
