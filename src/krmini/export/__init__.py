"""Export to the ecosystem: Hugging Face `transformers` layout (and, later, GGUF)."""
