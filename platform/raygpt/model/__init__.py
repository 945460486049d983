"""The network, importing nothing of raygpt but its config.

gpt.py       the GPT: blocks, attention, generation
kv_cache.py  the preallocated key/value cache
sampling.py  greedy, temperature, top-k, top-p
int8.py      INT8 weight-only layers and quantizing a model to them
"""

from raygpt.model.gpt import GPT

__all__ = ["GPT"]
