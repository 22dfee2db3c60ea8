"""Training: stage 1 (contrastive Embedder) and stage 2 (EG-RL Reasoner)."""
