"""PyTorch / transformers adapters: a language model as one LTV plant, and steering controllers."""
