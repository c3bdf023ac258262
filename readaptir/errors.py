"""The one base class for errors caused by bad input (config, data, model pairs), not by bugs.

``run.py`` prints these as a single line naming the file, line or key and the fix, without a traceback.
"""


class UserError(ValueError):
    """Bad input: the message names what is wrong and how to fix it, on one line."""


class StorageError(UserError):
    """The disk is full or a folder is not writable: the message names the folder and the fix."""


class NonFiniteError(FloatingPointError):
    """A NaN or infinite value about to be published (weights, embeddings, scores): nothing is stored."""
