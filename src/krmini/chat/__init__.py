"""Chat: the conversation template, instruction-tuning data, LoRA adapters and the terminal REPL."""
