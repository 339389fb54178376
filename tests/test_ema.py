"""ModelEMA: the averaging arithmetic, copied buffers, warm-up, frozen copy, state dicts."""

import pytest
import torch
from torch import nn

from fixmatch.models import ModelEMA
from fixmatch.models.ema import unwrap_model


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def fill_parameters(model: nn.Module, offset: float) -> None:
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * 0.5 + offset + i)


def test_update_is_decay_times_old_plus_rest_times_new():
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    old = [p.clone() for p in ema.module.parameters()]
    fill_parameters(model, offset=3.0)
    ema.update(model, step=0)
    for averaged, before, new in zip(ema.module.parameters(), old, model.parameters()):
        torch.testing.assert_close(averaged, 0.9 * before + 0.1 * new, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(averaged, new)


def test_buffers_are_copied_not_averaged():
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3) * 5 + 2)
    ema.update(model, step=0)
    for (name, averaged), live in zip(ema.module.named_buffers(), model.buffers()):
        assert torch.equal(averaged, live), name
    assert ema.module[1].num_batches_tracked.item() == 3


def test_later_updates_read_tensors_the_live_model_replaced():
    # The EMA remembers where the live tensors sit, not the tensors: a buffer swapped for a
    # new tensor (as Module.to does) or new parameter values must reach the next update.
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    ema.update(model, step=0)
    model[1].running_mean = torch.full((4,), 7.0)
    model[2].weight = nn.Parameter(torch.full((2, 4), 2.0))
    before = ema.module[2].weight.clone()
    ema.update(model, step=1)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 7.0))
    torch.testing.assert_close(ema.module[2].weight, 0.5 * before + 0.5 * 2.0)


def test_warmup_decay_schedule():
    ema = ModelEMA(small_model(), decay=0.999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(1_000_000) == 0.999
    assert ModelEMA(small_model(), decay=0.999).decay_at(0) == 0.999


def test_warmup_update_uses_the_warmup_decay():
    model = small_model()
    ema = ModelEMA(model, decay=0.999, warmup=True)
    old = [p.clone() for p in ema.module.parameters()]
    fill_parameters(model, offset=-2.0)
    ema.update(model, step=0)
    for averaged, before, new in zip(ema.module.parameters(), old, model.parameters()):
        torch.testing.assert_close(averaged, 0.1 * before + 0.9 * new, rtol=1e-6, atol=1e-6)


def test_copy_is_frozen_in_eval_mode_and_independent():
    model = small_model().train()
    ema = ModelEMA(model)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    fill_parameters(model, offset=1.0)
    ema.update(model, step=5)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_state_dict_round_trip():
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    fill_parameters(model, offset=4.0)
    model.train()(torch.randn(8, 3))
    ema.update(model, step=0)
    restored = ModelEMA(small_model(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_unwraps_compiled_and_data_parallel_models():
    model = small_model()
    assert unwrap_model(torch.compile(model)) is model
    ema = ModelEMA(torch.compile(nn.DataParallel(model)), decay=0.9)
    assert set(ema.state_dict()) == set(model.state_dict())  # no wrapper prefixes
    old = ema.module[2].bias.clone()
    fill_parameters(model, offset=3.0)
    ema.update(nn.DataParallel(torch.compile(model)), step=0)
    torch.testing.assert_close(ema.module[2].bias, 0.9 * old + 0.1 * model[2].bias)


def test_unwraps_distributed_data_parallel(tmp_path):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = small_model()
        ema = ModelEMA(nn.parallel.DistributedDataParallel(model), decay=0.9)
        assert set(ema.state_dict()) == set(model.state_dict())
        old = ema.module[0].weight.clone()
        fill_parameters(model, offset=1.0)
        ema.update(nn.parallel.DistributedDataParallel(model), step=0)
        torch.testing.assert_close(ema.module[0].weight, 0.9 * old + 0.1 * model[0].weight)
    finally:
        torch.distributed.destroy_process_group()


def test_rejects_bad_decay_and_mismatched_model():
    with pytest.raises(ValueError, match="decay=1.5"):
        ModelEMA(small_model(), decay=1.5)
    ema = ModelEMA(small_model())
    with pytest.raises(ValueError, match="differs"):
        ema.update(nn.Linear(3, 2), step=0)
