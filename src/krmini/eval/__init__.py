"""Evaluation: perplexity and bits per byte on held-out text, KoBEST by log-likelihood, run reports."""
