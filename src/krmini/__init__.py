"""kr-mini-llm: build a small Korean LLM from scratch, end to end."""

__version__ = "0.1.0"
