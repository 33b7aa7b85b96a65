"""Fine-tuning strategies: switches on the same encoder, trainer and evaluation (see docs/strategies.md)."""
