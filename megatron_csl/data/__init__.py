"""Offline data tools: C4 shards -> SentencePiece tokenizer -> Megatron indexed datasets.

Modules (import what you need; nothing here imports megatron-core until preprocessing runs):
- ``c4_shards``: find, read and decode C4-format JSON Lines shards (gzip or plain).
- ``tokenizer``: train a Llama-like SentencePiece model on a deterministic sample.
- ``preprocess``: tokenize shards into ``PREFIX_text_document.bin/.idx`` with K workers,
  resumable per shard part.
- ``synthetic_c4``: generate C4-format shards of structured synthetic text.
- ``bench``: throughput of the preprocessing pipeline against SentencePiece's own batch encoding.
"""
