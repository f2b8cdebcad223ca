"""Entry point of ``python -m simsched.report``; the command lives in ``simsched.app.report``."""
from simsched.app.report import cli

if __name__ == "__main__":
    cli()
