"""The real tritonserver and the pipeline on it."""
