"""The HTTP layer: FastAPI routes over :class:`gateway.service.FaceService`."""
