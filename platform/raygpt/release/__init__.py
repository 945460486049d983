"""From a trained checkpoint to one fit to serve, measured.

int8.py          quantize a checkpoint, write it, and gate it against the original
evaluation.py    val loss, perplexity, size, peak memory and decode speed, side by side
memory_probe.py  peak memory of loading and decoding, in a fresh process
"""
