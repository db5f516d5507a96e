"""The Triton backend: detector and embedder behind the same interfaces as in-process.

``TritonDetector`` calls the repository's ``detector`` model, ``TritonEmbedder`` its
``embedder`` (dynamically batched on the server; a fused model's repository has one per
part, which the client wraps in a :class:`~facerec.fusion.FusedEmbedder`); alignment and
flip augmentation stay in the client's :class:`~facerec.pipeline.FacePipeline`, so both
backends share every step but where the networks run. gRPC by default (``host:port`` of
the gRPC endpoint), HTTP when asked. Each thread gets its own client connection.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from facerec.detection.types import Detections
from facerec.embedding import embed_in_batches
from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.models import BASE_MODEL, ModelCard
from facerec.triton.server import TritonUnavailableError

PROTOCOLS = ("grpc", "http")


class TritonInferenceError(FaceRecError):
    """Triton answered, but with an error (a bad request or a failing model)."""

    code = "triton_error"
    http_status = 502


def _module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise TritonUnavailableError(
            f"the Triton backend needs tritonclient ({exc.name} is missing): "
            "pip install -e '.[triton]'"
        ) from None
    return module


class TritonConnection:
    """One server address; a client per thread; errors turned into ``FaceRecError``."""

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 60.0) -> None:
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._module = _module(protocol)
        self._local = threading.local()

    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def model_ready(self, model: str) -> bool:
        """Whether the server answers and has ``model`` loaded (never raises)."""
        try:
            return bool(self.client().is_model_ready(model))
        except Exception:
            return False

    def model_config(self, model: str) -> dict[str, Any]:
        """The served config of ``model`` as JSON (both protocols alike)."""
        config: dict[str, Any] = self._call(
            lambda c: c.get_model_config(model, **({"as_json": True} if self.grpc else {}))
        )
        return dict(config.get("config", config))

    @property
    def grpc(self) -> bool:
        return self.protocol == "grpc"

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        def run(client: Any) -> list[np.ndarray]:
            tensors = []
            for name, array in inputs.items():
                t = self._module.InferInput(name, list(array.shape), _DTYPES[array.dtype.str])
                t.set_data_from_numpy(np.ascontiguousarray(array))
                tensors.append(t)
            wanted = [self._module.InferRequestedOutput(n) for n in outputs]
            extra = {"client_timeout": self.timeout_s} if self.grpc else {}
            result = client.infer(model, tensors, outputs=wanted, **extra)
            return [np.asarray(result.as_numpy(n)) for n in outputs]

        outs: list[np.ndarray] = self._call(run)
        return outs

    def _call(self, fn: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(self.client())
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if "UNAVAILABLE" in status or "DEADLINE" in status or not status:
                raise TritonUnavailableError(
                    f"Triton at {self.url} ({self.protocol}) is unreachable: {exc.message()}"
                ) from None
            raise TritonInferenceError(f"Triton: {exc.message()}") from None
        except (ConnectionError, OSError) as exc:
            raise TritonUnavailableError(
                f"Triton at {self.url} ({self.protocol}) is unreachable: {exc}"
            ) from None


_DTYPES = {"|u1": "UINT8", "<f4": "FP32"}


class TritonDetector:
    """:class:`~facerec.detection.types.FaceDetector` on the ``detector`` model."""

    def __init__(self, connection: TritonConnection, model: str = "detector") -> None:
        self.connection = connection
        self.model = model

    def ready(self) -> bool:
        return self.connection.model_ready(self.model)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidArgumentError(f"images must be uint8[H, W, 3], got {image.shape}")
            boxes, scores, marks = self.connection.infer(
                self.model, {"IMAGE": image}, ("BOXES", "SCORES", "LANDMARKS")
            )
            out.append(
                Detections(
                    boxes.astype(np.float32).reshape(-1, 4),
                    scores.astype(np.float32).reshape(-1),
                    marks.astype(np.float32).reshape(-1, 5, 2),
                )
            )
        return out


class TritonEmbedder:
    """:class:`~facerec.embedding.FaceEmbedder` on the ``embedder`` model, or on ``model``
    (unit embeddings of uint8 crops of ``card``'s model); learns its batch limit,
    precision and the model it serves from the server's config: ``model_name`` (its
    ``model`` parameter) and, in a fused model's repository, ``fused_model`` (the fused
    model it is a part of; ``""`` otherwise)."""

    def __init__(
        self, connection: TritonConnection, card: ModelCard, model: str = "embedder"
    ) -> None:
        self.connection = connection
        self.model = model
        self.embedding_size = card.embedding_size
        self.input_size = card.input_size
        config = connection.model_config(model)
        self.max_batch = int(config.get("max_batch_size", 0)) or 64
        params = config.get("parameters", {})
        self.precision = str(params.get("precision", {}).get("string_value", "fp32"))
        # Repositories written before models were selectable by name served the base model.
        self.model_name = str(params.get("model", {}).get("string_value", BASE_MODEL))
        self.fused_model = str(params.get("fused_model", {}).get("string_value", ""))

    @property
    def served_model(self) -> str:
        """The model the server's repository serves: the fused model this embedder is a
        part of, else the embedder's own."""
        return self.fused_model or self.model_name

    def ready(self) -> bool:
        return self.connection.model_ready(self.model)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        def run(batch: np.ndarray) -> np.ndarray:
            return self.connection.infer(self.model, {"CROPS": batch}, ("EMBEDDINGS",))[0]

        return embed_in_batches(crops, self.input_size, self.embedding_size, self.max_batch, run)
