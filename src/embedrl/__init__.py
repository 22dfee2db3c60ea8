"""embedrl: reasoning-driven universal multimodal embeddings (Embed-RL, arXiv 2602.13823)."""

__version__ = "0.1.0"
