"""simsched's named sweeps (``+sweep=NAME``), shipped in the package as ``simsched.sweeps``."""
