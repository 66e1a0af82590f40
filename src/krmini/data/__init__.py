"""Corpus → cleaned, deduplicated, split, tokenized binary shards."""
