"""Real-time video: the analyzer, sources, tracking and the identity vote."""
