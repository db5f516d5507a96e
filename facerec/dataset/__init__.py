"""Face data sets on disk: source layouts and aligned crops for training."""
