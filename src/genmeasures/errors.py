"""One exception hierarchy for the whole library.

Every error raised on purpose by genmeasures derives from :class:`GenMeasuresError`, so that a
caller can catch the library's errors without catching programming errors. The subclasses also
derive from the built-in exception a Python user would expect (``ValueError``), so existing
handlers keep working.
"""

from __future__ import annotations


class GenMeasuresError(Exception):
    """Base class of every error raised on purpose by genmeasures."""


class DataError(GenMeasuresError, ValueError):
    """A dataset could not be read or is inconsistent (names the file and what was expected)."""


class ModelError(GenMeasuresError, ValueError):
    """A model could not be built, loaded or analysed."""


class UnsupportedLayerError(ModelError):
    """A module the measures cannot handle (names the module path and its type)."""


class MeasureError(GenMeasuresError, ValueError):
    """A measure was asked for with bad input or could not be computed."""


class UnknownMeasureError(MeasureError):
    """A measure name that is not in the registry (the message lists close matches)."""


class MissingInputError(MeasureError):
    """A measure needs an input that was not given (initial model, training records, data)."""


class UnsupportedInputError(MeasureError):
    """The data are outside a measure's domain (e.g. integer token ids for an input gradient)."""


class NumericalError(MeasureError):
    """A non-finite weight, logit or norm (names the layer)."""


class EvaluationError(GenMeasuresError, ValueError):
    """A table cannot be scored (names the column, what was expected and what was received)."""


class ReportError(EvaluationError):
    """A report folder cannot be created or written (names the folder and the system's reason)."""


class TrainingError(GenMeasuresError, ValueError):
    """A training configuration or a training input is invalid."""


class SpaceError(GenMeasuresError, ValueError):
    """A space (preset, TOML file or dict) or a configuration is invalid.

    The message names the source (preset name or file path), the key (e.g. ``grid.width``), the
    value received and what was expected.
    """


class StudyError(GenMeasuresError):
    """A study folder cannot be created, opened or used as asked."""


class CorruptCheckpointError(StudyError):
    """A checkpoint file does not match the digest recorded with its model."""


class WorkerError(GenMeasuresError):
    """A worker process died before returning its work (killed from outside, out of memory)."""


class GenMeasuresWarning(UserWarning):
    """A value that is returned but deserves attention (undefined measure, no convergence)."""
