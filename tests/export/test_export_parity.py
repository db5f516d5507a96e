"""The exported ONNX models reproduce their PyTorch sources on real faces."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.mtcnn_weights import load_mtcnn  # noqa: E402
from facerec.embedding import per_image_standardization  # noqa: E402
from facerec.models import facerec_home  # noqa: E402
from facerec.pipeline import FacePipeline, PipelineConfig  # noqa: E402
from tests.support.data import DIFFERENT_PAIRS, lfw_image  # noqa: E402
from training.facenet_keras import load_facenet_keras  # noqa: E402
from training.mtcnn_reference import EagerMTCNN  # noqa: E402

KEYS = sorted({k for pair in DIFFERENT_PAIRS for k in pair})


def test_detector_matches_pytorch_reference(
    fp32_pipeline: FacePipeline, group_photo: np.ndarray
) -> None:
    w = facerec_home() / "weights"
    eager = EagerMTCNN(*load_mtcnn(w / "pnet.pt", w / "rnet.pt", w / "onet.pt"))
    images = [lfw_image(k) for k in KEYS] + [group_photo]
    for image, ours in zip(images, fp32_pipeline.detect(images), strict=True):
        boxes, scores, marks = eager.detect(image)
        assert len(boxes) == len(ours) > 0
        a, b = np.argsort(-scores), np.argsort(-ours.scores)
        assert np.abs(boxes[a] - ours.boxes[b]).max() <= 0.5
        assert np.abs(marks[a] - ours.landmarks[b]).max() <= 0.5


def test_embedder_matches_pytorch() -> None:
    pipeline = FacePipeline.local(PipelineConfig(precision="fp32", flip=False))
    images = [lfw_image(k) for k in KEYS]
    crops = np.concatenate(
        [pipeline.align(img, det) for img, det in zip(images, pipeline.detect(images), strict=True)]
    )
    ours = pipeline.embed(crops)
    net = load_facenet_keras(facerec_home() / "weights" / "facenet_keras.h5").eval()
    with torch.inference_mode():
        theirs = net(torch.from_numpy(per_image_standardization(crops))).numpy()
    assert ((ours * theirs).sum(axis=1) >= 0.99999).all()
