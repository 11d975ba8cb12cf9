"""The error types users see. Each message is one line naming the file or key and the fix.

The command line catches :class:`DiffsatError` and prints its message with exit status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class DiffsatError(ValueError):
    """Base of every user-facing error: bad config, data, checkpoint or shape."""


class ConfigError(DiffsatError):
    """A config that cannot be used; the message is one line naming the file and key."""


class CheckpointError(DiffsatError):
    """A checkpoint that cannot be used; the message names the file, the key and the likely fix."""


class TrainingDivergedError(DiffsatError, FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the fix and the intact checkpoint."""

