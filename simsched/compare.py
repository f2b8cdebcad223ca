"""Entry point of ``python -m simsched.compare``; the command lives in ``simsched.app.compare``."""
from simsched.app.compare import cli

if __name__ == "__main__":
    cli()
