"""Calibration: measure forward steps of a real model (``calibrate.profile``, ``calibrate.gpu_grid``;
torch + transformers, the ``calibrate`` extra) and fit the simulator's latency models to it
(``calibrate.fit``; pandas + scipy). Importing this package imports nothing heavy."""
