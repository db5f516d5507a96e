"""The pipeline of the pipeline options every image command shares (``--model``,
``--precision``, ``--alignment`` ...; the options themselves are added in
:mod:`facerec.cli.main`)."""

from __future__ import annotations

import argparse

from facerec.detection.mtcnn import MTCNNConfig
from facerec.pipeline import FacePipeline, PipelineConfig


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline settings of the pipeline options (:func:`_pipeline_options`)."""
    return PipelineConfig(
        detector=MTCNNConfig(
            min_face_size=args.min_face_size, thresholds=tuple(args.detection_thresholds)
        ),
        alignment=args.alignment,
        flip=args.flip,
        precision=args.precision,
        threads=args.threads,
        max_detect_side=args.max_detect_side,
        model=args.model,
    )


def pipeline_from_args(args: argparse.Namespace) -> FacePipeline:
    return FacePipeline.open(config_from_args(args))


__all__ = ["config_from_args", "pipeline_from_args"]
