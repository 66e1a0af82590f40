"""Export to the ecosystem: Hugging Face `transformers` layout and GGUF (llama.cpp, Ollama); HF import."""
