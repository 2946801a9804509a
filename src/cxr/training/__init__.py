"""Training: configuration, models, the cached-image loader, augmentation, checkpoints, the loop."""
