"""Character-level GPT experiments on tinyshakespeare, with PyTorch Lightning and Hydra."""
