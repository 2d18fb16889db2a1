"""Data shipped with ltv-control (contrastive sentiment sentences, evaluation prompts)."""
