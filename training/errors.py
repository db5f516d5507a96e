"""Errors of the training tools, with machine-readable codes like the rest of facerec."""

from __future__ import annotations

from facerec.errors import FaceRecError


class ConversionError(Exception):
    """A published weight file does not match the module it is converted into."""


class TrainingDataError(FaceRecError):
    """Training data that cannot be used (codes: ``not_found``, ``empty_dataset``,
    ``too_few_identities``, ``corrupt_image``, ``wrong_crop_size``, ``invalid_split``)."""

    code = "invalid_dataset"
    http_status = 422


class CheckpointError(FaceRecError):
    """A checkpoint that cannot be used (codes: ``not_a_checkpoint``,
    ``wrong_architecture``, ``checkpoint_not_found``)."""

    code = "not_a_checkpoint"
    http_status = 422


class TrainingConfigError(FaceRecError):
    """Settings that contradict each other or the data (code ``invalid_argument``)."""

    code = "invalid_argument"
    http_status = 400
