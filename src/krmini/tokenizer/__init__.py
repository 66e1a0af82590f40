"""A Korean-efficient byte-fallback BPE tokenizer, saved in Hugging Face's format."""

from krmini.tokenizer.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, KoTokenizer

__all__ = ["CHAT_TOKENS", "SPECIAL_TOKENS", "KoTokenizer"]
