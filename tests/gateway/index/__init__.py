"""The face index on real Milvus, and 1:N matching on it."""
