"""raygpt: a GPT from raw text or code to an autoscaled HTTP service, on Ray.

The package root imports nothing heavy; the core modules (model, tokenizer,
checkpoint, config) import no Ray, so they run on any box with torch.
"""

__version__ = "0.1.0"
