"""Resource planning: memory, FLOP and communication cost models (chapter 02, used by 05 and 09)."""
