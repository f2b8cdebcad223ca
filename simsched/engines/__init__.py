"""The engines that serve a workload on G GPUs.

``run_to_completion``: request-level batches that hold their GPU until their longest member
finishes (the seed's and the papers' model). Each engine returns columnar results that the
metrics and outputs of ``simsched`` read; an engine imports neither Hydra nor MLflow.
"""
