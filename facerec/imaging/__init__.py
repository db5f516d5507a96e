"""Image decoding and geometric helpers."""
