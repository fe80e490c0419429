"""The datasets, their deterministic resumable batches, and the augmentation on device."""
