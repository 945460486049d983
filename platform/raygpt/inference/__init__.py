"""Generation: checkpoints made ready to decode, the continuous-batching engine, streamed text.

    load.py         a checkpoint laid out for decoding, or quantized for serving
    engine.py       continuous batching over a pool of KV-cache slots
    text_stream.py  token ids to text, whole characters, stop strings cut exactly

No Ray: serve_apps/ runs the engine in a Serve replica.
"""
