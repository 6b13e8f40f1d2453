"""The MNIST corner: the same task done by hand in NumPy and with PyTorch, side by side."""
