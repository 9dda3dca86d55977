"""The converter's version, stamped into every segment and bundle it writes."""

__version__ = "0.1.0"
PRODUCER = "s2conv"
