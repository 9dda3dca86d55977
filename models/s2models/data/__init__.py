"""Workloads: real data that ships inside packages, split and shifted with a fixed seed."""

from s2models.data import digits, har
from s2models.data.workload import Split, Workload, save_npz

__all__ = ["Split", "Workload", "digits", "har", "save_npz"]
