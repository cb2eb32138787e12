"""Corpora, tokenizer and the data-governance pipeline."""
