"""Entry point of ``python -m simsched.resume``; the command lives in ``simsched.app.resume``."""
from simsched.app.resume import cli

if __name__ == "__main__":
    cli()
