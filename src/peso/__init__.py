"""peso: continual LoRA adaptation of LLM-based generative recommenders (PESO and its baselines)."""

__version__ = "0.1.0"
