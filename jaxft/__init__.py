"""jaxft: fine-tune pretrained BERT encoders with JAX and Flax."""

__version__ = "0.1.0"
