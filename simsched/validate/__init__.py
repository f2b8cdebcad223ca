"""Validation against theory and the papers: ``python -m simsched.validate`` runs the checks and
writes a report (Markdown, PNG plots, JSON/CSV) stating, for each check, the expected value, the
simulated value with its 95% confidence interval over replications, and pass/fail.

One module per check: ``queueing`` (1: M/D/1, M/G/1), ``multibin_theorem`` (2: Theorem 4.2,
k → ∞, Lemma 5.1), ``prediction_errors`` (3), ``eight_servers`` (4), ``sla_capacity`` (5),
``seed_table`` (6). ``theory`` holds the closed forms, ``stats`` the verdict rule.
"""
