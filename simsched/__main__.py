"""Entry point of ``python -m simsched``; the command lives in ``simsched.app.main``."""
from simsched.app.main import main

if __name__ == "__main__":
    main()
