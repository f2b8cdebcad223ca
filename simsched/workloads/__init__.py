"""Workloads: arrival processes, length distributions and the columnar request table."""
from simsched.workloads.requests import RequestTable
from simsched.workloads.synthetic import SyntheticWorkload

__all__ = ["RequestTable", "SyntheticWorkload"]
