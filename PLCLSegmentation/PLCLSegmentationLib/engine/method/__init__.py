"""The method: network, losses, augmentation, batches, training, prediction and the model file (torch)."""
