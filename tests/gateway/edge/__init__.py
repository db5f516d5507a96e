"""The service's edge and its resource limits."""
