"""sicog: the SICOG self-improving loop for multimodal LLMs."""

__version__ = "0.1.0"
