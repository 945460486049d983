"""The network, importing nothing of raygpt but its config.

gpt.py            the GPT: blocks, attention, generation
moe.py            the mixture-of-experts MLP: router, dropless dispatch, router losses
kv_cache.py       the preallocated key/value cache
sampling.py       greedy, temperature, top-k, top-p
int8.py           INT8 layers (int8 weights; int8 GEMM on CPU) and quantizing a model to them
packed_linear.py  CPU matmuls with weights packed once for oneDNN
linear_layers.py  every nn.Linear and its parent: where INT8 and packed layers go
"""

from raygpt.model.gpt import GPT

__all__ = ["GPT"]
