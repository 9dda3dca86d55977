"""Workloads: real data that ships inside packages, split and shifted with a fixed seed."""

from s2models.data import digits, fan, har, mnist, open_set
from s2models.data.workload import Split, Workload, save_npz

__all__ = ["Split", "Workload", "digits", "fan", "har", "mnist", "open_set", "save_npz"]
