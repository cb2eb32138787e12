"""Data: offline corpora (sources, the user's files), the governance pipeline (cleaning, quality
rules, exact and near dedup, the domain filter, label checks) with every document leaving kept
or dropped with a reason, the byte-level BPE tokenizer, packed shards and the stream loader."""
__all__ = ["clean", "config", "dedup", "domain", "files", "governance", "labels", "loader", "pipeline",
           "quality", "shards", "sources", "synthetic", "tokenizer"]
