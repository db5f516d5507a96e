"""Serving through NVIDIA Triton Inference Server: repository, server, client."""
