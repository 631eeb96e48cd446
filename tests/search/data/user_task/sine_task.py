"""A task of one's own: regress sin(w . x) with a residual MLP (the README's example)."""

import torch
from torch import nn

from einsearch.search import Task
from einsearch.search.tasks import TensorSpec, step_generator


class SineTask(Task):
    name = "sine"
    tokens_per_example = 1  # one example = one token in the FLOP ledger
    input_spec = TensorSpec((-1, 16), "float", "16 Gaussian features")
    output_spec = TensorSpec((-1, 1), "float", "sin of a fixed projection")

    def __init__(self, frequency: float = 1.0):
        self.w = frequency * torch.randn(16, generator=torch.Generator().manual_seed(0))

    def build_model(self, width, *, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                  nn.Linear(width, 1))
        model.width = width  # what muP scales against
        return model

    def structured_select(self, name, module):
        return name == "2"  # the hidden layer; input and readout stay dense

    def batch(self, step, batch_size, generator):
        g = step_generator(generator.initial_seed(), step, "sine")  # a pure function of (seed, step)
        x = torch.randn(batch_size, 16, generator=g)
        return x, torch.sin(x @ self.w)[:, None]

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def eval_batches(self, num_batches, batch_size):
        return [self.batch(10**6 + i, batch_size, torch.Generator().manual_seed(0)) for i in range(num_batches)]


def make_task(frequency: float = 1.0) -> SineTask:
    return SineTask(frequency)
