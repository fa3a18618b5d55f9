"""Errors the CLI reports as one clear line (no traceback)."""


class Snn2hwError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class DataError(Snn2hwError):
    """A dataset file is missing, truncated or of the wrong shape."""


class CheckpointError(Snn2hwError):
    """A checkpoint is missing, corrupt, truncated or of another format."""


class ConfigError(Snn2hwError):
    """A configuration value or file is invalid."""


class ExportError(Snn2hwError):
    """A target cannot run part of the network (the message names layer and fix)."""


class VerificationError(Snn2hwError):
    """An export was written but its ``--check`` failed (the CLI exits with 3, not 2): the
    message lists ``failures``, one line each; ``result`` is what was written (the caller's
    ExportResult), so the artefact, verification.json and README can still be inspected."""

    def __init__(self, message: str, failures: list[str], result: object = None) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.result = result


class Notice(UserWarning):
    """Something the user should know that is not an error (an assumption made, a
    value adjusted). The CLI prints each as one line ``snn2hw: note: ...``, once per
    run; ``--quiet`` silences them, ``-v`` adds where they came from."""


def notice(message: str) -> None:
    """Tell the user ``message`` (see ``Notice``); library callers get a ``Notice`` warning."""
    import warnings

    warnings.warn(message, Notice, stacklevel=2)


class TrainingDivergedError(Snn2hwError):
    """The loss became NaN or infinite: the run stopped; its last good checkpoint is kept."""
