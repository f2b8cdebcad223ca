"""The application layer: the command line, sweeps, reports, the capacity command and the
config paths. It uses the core (``run``, ``config``, ``metrics``, ``outputs``, the engines,
schedulers, workloads); the core never imports it (``tests/test_layers.py``)."""
