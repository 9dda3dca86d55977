"""The s2l exception hierarchy, shared by the runtime and the converter.

Every message names the node, tensor, field or file at fault, says what was expected
and what was found, and where it can, how to fix it. The CLIs print the message alone
(no traceback unless ``--debug``) and exit non-zero.
"""

from __future__ import annotations


class S2LError(Exception):
    """Base class of every error s2l raises on purpose."""


class ConversionError(S2LError):
    """The converter cannot turn this model into a bundle."""


class UnsupportedOpError(ConversionError):
    """A node uses an operator the converter has no handler for."""


class UnsupportedGraphError(ConversionError):
    """The graph's structure (not a single op) is outside what the converter handles."""


class BundleError(S2LError):
    """A bundle file is truncated, corrupt, hostile or of an unknown format version."""


class SignatureError(BundleError):
    """Trusted keys are configured and a bundle is unsigned, signed by another key, or its signature does not verify."""


class KeyFileError(S2LError):
    """A signing key or public key file is missing, unreadable or not an Ed25519 key (or `cryptography` is missing)."""


class UsageError(S2LError):
    """A command-line flag or argument has a value the command cannot use (the CLIs exit 2)."""


class RuntimeInputError(S2LError):
    """Input given to the runtime (data file, sample, option) is not what the bundle expects."""


class StateError(S2LError):
    """An adapter state file is missing, corrupt or belongs to another bundle."""


class BackendError(S2LError):
    """The inference backend (onnxruntime, LiteRT) is missing or failed to run a segment."""
