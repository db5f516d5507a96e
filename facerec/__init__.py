"""facerec: face detection, alignment, FaceNet embeddings and matching on ONNX Runtime."""

__version__ = "0.1.0"
