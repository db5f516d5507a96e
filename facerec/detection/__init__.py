"""Face detection: MTCNN on ONNX Runtime, and the policy that picks a face."""

from facerec.detection.types import Detections, FaceDetector

__all__ = ["Detections", "FaceDetector"]
