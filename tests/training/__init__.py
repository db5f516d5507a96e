"""Fine-tuning (training/): data, losses, runs, the GPU script, exporting a checkpoint."""
