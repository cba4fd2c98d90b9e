"""PyTorch: :class:`AdvisorLR`, an ``LRScheduler`` driven by an advisor."""
