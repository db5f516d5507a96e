"""The HTTP layer: FastAPI routes over the services of :mod:`gateway.service`."""
