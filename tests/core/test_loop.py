"""The one training loop: exactly the asked number of steps, hooks after each, a falling loss."""

import torch

from adapterbank.core import loop


class Recorder:
    def __init__(self):
        self.steps, self.ended = [], False

    def on_step(self, state):
        self.steps.append((state.step, state.total, state.size, dict(state.postfix)))

    def on_end(self):
        self.ended = True


def test_the_loop_runs_the_steps_asked_for_calls_hooks_and_learns(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    weight = torch.nn.Parameter(torch.zeros(4))
    pulled = []

    def batches():  # an endless stream: the loop must stop after total_steps without pulling more
        while True:
            for start in range(0, 64, 16):
                pulled.append(start)
                yield slice(start, start + 16)

    def step_loss(rows):
        return torch.nn.functional.mse_loss(x[rows] @ weight, y[rows]), 16, {"part": rows.start}

    killed = []
    monkeypatch.setattr("adapterbank.faults.point", killed.append)
    recorder = Recorder()
    result = loop.train([{"params": [weight], "lr": 0.3, "weight_decay": 0.0}], batches(), step_loss, 40,
                        hooks=[recorder, loop.KillPoints()])
    assert result.steps == 40 and len(pulled) == 40 and result.sizes == [16] * 40
    assert [s[0] for s in recorder.steps] == list(range(1, 41)) and recorder.ended
    assert recorder.steps[1][3] == {"part": 16} and killed == [f"train-step-{n}" for n in range(1, 41)]
    assert result.losses[-1] < 0.1 * result.losses[0]


def test_a_finite_stream_ends_the_loop_early():
    weight = torch.nn.Parameter(torch.ones(1))
    result = loop.train([{"params": [weight], "lr": 0.01}], iter(range(3)),
                        lambda _: ((weight ** 2).sum(), 1, {}), 12)
    assert result.steps == 3
