"""The device: encrypted local store, LiteRT runtime, secure-aggregation client (later issues)."""
