"""Verification metrics and the LFW benchmark."""
