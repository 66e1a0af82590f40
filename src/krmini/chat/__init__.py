"""Chat: the conversation template, instruction-tuning data and runs, chat-model loading, `lora merge`, the REPL."""
