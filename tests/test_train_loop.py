"""The loop's promise: stopping after a checkpoint and resuming gives exactly the weights of an unbroken run."""

import pytest
import torch

from modelfactory.train.loop import Checkpoint, StopRequested, TrainConfig, fit

X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
Y = (X.sum(1) > 0).long()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _loss(model, batch, idx):
    return torch.nn.functional.cross_entropy(model(batch["x"]), Y[idx])


def _batch(idx):
    return {"x": X[idx]}


CFG = TrainConfig(epochs=3, batch_size=8, lr=1e-2, checkpoint_every=4, seed=3)


def test_resume_matches_an_unbroken_run(tmp_path):
    unbroken = _model()
    fit(unbroken, len(X), _batch, _loss, CFG)

    interrupted = _model()
    calls = {"n": 0}

    def stop_at_6():
        calls["n"] += 1
        return calls["n"] == 6

    ckpt = Checkpoint(tmp_path / "ckpt")
    with pytest.raises(StopRequested):
        fit(interrupted, len(X), _batch, _loss, CFG, ckpt, should_stop=stop_at_6)
    assert ckpt.exists()

    resumed = _model()  # a fresh process would start from fresh weights
    result = fit(resumed, len(X), _batch, _loss, CFG, ckpt)
    assert result.resumed_from_step == 6 and result.steps == 15
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_training_reduces_loss():
    model = _model()
    before = float(_loss(model, _batch(list(range(40))), list(range(40))).detach())
    fit(model, len(X), _batch, _loss, TrainConfig(epochs=20, batch_size=8, lr=1e-2))
    after = float(_loss(model, _batch(list(range(40))), list(range(40))).detach())
    assert after < before * 0.7
