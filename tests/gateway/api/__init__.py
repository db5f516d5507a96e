"""The HTTP API: in-process (Starlette's TestClient) and on the real service."""
