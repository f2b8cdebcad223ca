"""simsched's Hydra config tree, shipped in the package as ``simsched.conf`` (see pyproject)."""
