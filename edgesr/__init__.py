"""edgesr: efficient super-resolution models, from checkpoint to edge deployment."""

__version__ = "0.1.0"
