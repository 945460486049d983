"""The Ray Data layer: corpus to token shards (prepare) and shards to training windows (stream)."""
