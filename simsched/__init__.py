"""simsched: a discrete-event simulator of LLM-serving batch schedulers."""

__version__ = "0.1.0"
