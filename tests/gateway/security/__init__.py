"""API keys, the bootstrap admin key, settings, template protection and what reaches the
disk."""
