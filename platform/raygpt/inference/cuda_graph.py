"""A decode step captured once as a CUDA graph and replayed.

At small batch a GPU decode step is hundreds of tiny kernels, and launching them costs more
than running them. A graph records the launches once; each replay sends them all in one go.
It replays on the memory it was captured with, so the step's inputs are copied into fixed
buffers first and its output is read from a fixed buffer after (valid until the next replay),
and the step must keep its shapes and never wait for the host: the engine's static decode
step is made for this (inference/engine.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WARMUP_RUNS = 3  # on a side stream before capture: lazy initialisation stays out of the graph


class CapturedStep:
    def __init__(self, step: Callable[..., torch.Tensor]) -> None:
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.output: torch.Tensor | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self._capture(inputs)
        for buffer, value in zip(self.inputs, inputs, strict=True):
            buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.output

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        # The warm-up runs do what the first real step does (same tokens, same positions),
        # so whatever they write into the KV cache the replay writes again.
        self.inputs = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self.step(*self.inputs)
        self.graph = graph
