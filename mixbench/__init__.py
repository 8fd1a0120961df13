"""mixbench: benchmark mixup data augmentation on one fast PyTorch engine."""

__version__ = "0.1.0"
