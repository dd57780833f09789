"""NBC surrogate, neighbours and metric; PGD stays in its ball."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfnn.train.attacks import pgd, project, uniform_in_ball
from vfnn.train.models import build_model, forward_with_preacts
from vfnn.train.objectives import ScheduleValues
from vfnn.train.regularisers import nbc_agreement, nbc_neighbours, nbc_surrogate, normalised_weights

AT_01 = ScheduleValues(eps=0.1, target_eps=0.1)  # what a regulariser's loss gets: it uses the unramped radius


@pytest.fixture
def net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return build_model("fc:32x3", (1, 8, 8), 10, [0.3], [0.3])


def test_surrogate_rewards_agreement() -> None:
    same = nbc_surrogate([torch.tensor([[1.0, -2.0]])], [torch.tensor([[0.5, -1.0]])], 1.0, [1.0])
    flipped = nbc_surrogate([torch.tensor([[1.0, -2.0]])], [torch.tensor([[-0.5, 1.0]])], 1.0, [1.0])
    assert same < -torch.tanh(torch.tensor(1.0)) < flipped
    expected = (-torch.tanh(1 + torch.tensor([0.5, 2.0]))).mean()
    assert torch.isclose(same, expected)


def test_layer_weights_normalise() -> None:
    assert normalised_weights(3, None) == pytest.approx([1 / 3] * 3)
    assert normalised_weights(2, (1.0, 3.0)) == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError):
        normalised_weights(3, (1.0, 1.0))


def test_neighbours_stay_in_ball_and_pixel_box(net: torch.nn.Sequential) -> None:
    x = torch.rand(16, 1, 8, 8)
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 1.0
    _, z = forward_with_preacts(net, x)
    for kind, count in (("uniform", 3), ("adversarial", 1), ("both", 4)):
        xn = nbc_neighbours(net, x, z, 0.1, kind, samples=3, steps=5)
        assert xn.shape[0] == count * 16
        assert (xn - x.repeat(count, 1, 1, 1)).abs().max() <= 0.1 + 1e-6
        assert xn.min() >= 0.0 and xn.max() <= 1.0


def test_adversarial_neighbours_find_more_disagreement(net: torch.nn.Sequential) -> None:
    x = torch.rand(64, 1, 8, 8)
    _, z = forward_with_preacts(net, x)
    gen = torch.Generator().manual_seed(0)
    uni = nbc_neighbours(net, x, z, 0.1, "uniform", samples=4, generator=gen)
    adv = nbc_neighbours(net, x, z, 0.1, "adversarial", steps=10, generator=gen)
    _, agree_uniform = nbc_agreement(net, x, uni)
    per_layer, agree_adv = nbc_agreement(net, x, adv)
    assert agree_adv < agree_uniform < 1.0
    assert len(per_layer) == 3 and all(0 <= v <= 1 for v in per_layer)
    assert nbc_agreement(net, x, x)[1] == 1.0


def test_nbc_gradient_reduces_disagreement(net: torch.nn.Sequential) -> None:
    """A few steps on the NBC loss alone raise the NBC metric (the surrogate points the right way)."""
    x = torch.rand(128, 1, 8, 8)
    gen = torch.Generator().manual_seed(1)
    _, z = forward_with_preacts(net, x)
    probe = nbc_neighbours(net, x, z, 0.2, "uniform", samples=4, generator=gen)
    before = nbc_agreement(net, x, probe)[1]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(30):
        _, z = forward_with_preacts(net, x)
        xn = nbc_neighbours(net, x, z, 0.2, "uniform", samples=2)
        loss = nbc_surrogate(z, forward_with_preacts(net, xn)[1], 1.0, normalised_weights(3, None))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nbc_agreement(net, x, probe)[1] > before


def test_pgd_stays_in_ball_and_raises_loss(net: torch.nn.Sequential) -> None:
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    gen = torch.Generator().manual_seed(2)
    x_adv = pgd(net, x, y, 0.1, 10, generator=gen)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        noise = F.cross_entropy(net(uniform_in_ball(x, 0.1, gen)), y)
        assert F.cross_entropy(net(x_adv), y) > noise
    assert torch.equal(project(x + 1.0, x, 0.1), (x + 0.1).clamp(0, 1))


def test_certified_margin_bounds_are_sound_and_ordered(net: torch.nn.Sequential) -> None:
    """ibp <= crown-ibp <= crown lower bounds, all below every sampled margin; the y row is 0."""
    from vfnn.train.objectives import margin_lower_bounds

    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    lb = {m: margin_lower_bounds(net, x, y, 0.02, 10, m).detach() for m in ("ibp", "crown-ibp", "crown")}
    assert (lb["ibp"] <= lb["crown-ibp"] + 1e-5).all() and (lb["crown-ibp"] <= lb["crown"] + 1e-5).all()
    assert lb["crown-ibp"][torch.arange(16), y].abs().max() == 0
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(50):
            out = net(uniform_in_ball(x, 0.02, gen))
            assert (lb["crown"] <= out.gather(1, y[:, None]) - out + 1e-5).all()
    assert margin_lower_bounds(net, x, y, 0.02, 10, "crown-ibp").requires_grad


def test_persistent_neighbours_stay_in_ball_and_climb_the_disagreement(net: torch.nn.Sequential) -> None:
    """The training step's own input gradient moves each image's stored neighbour up the NBC loss."""
    from vfnn.train.objectives import Batch
    from vfnn.train.regularisers import NBC

    torch.manual_seed(0)
    x_all = torch.rand(50, 1, 8, 8)
    reg = NBC({"neighbours": "persistent", "every": 1}, weight=1.0)
    idx = torch.arange(10, 42)
    batch = Batch(x_all[idx], torch.zeros(32, dtype=torch.long), idx, len(x_all), 0)
    before = reg.loss(net, batch, AT_01)
    assert reg.offsets is not None and reg.offsets.shape == (50, 1, 8, 8)
    stored = reg.offsets.clone()
    before.backward()
    moved = reg.offsets
    assert torch.equal(moved[:10], stored[:10]) and torch.equal(moved[42:], stored[42:])  # only the batch's rows
    assert not torch.equal(moved[idx], stored[idx]) and moved.abs().max() <= 1.0
    again = reg.loss(net, Batch(x_all[idx], batch.y, idx, len(x_all), 1), AT_01)
    assert again > before  # the neighbours now disagree more with their images
    x_n = (x_all[idx] + 0.1 * moved[idx].float()).clamp(0, 1)
    assert (x_n - x_all[idx]).abs().max() <= 0.1 + 1e-6
    assert reg.state()["offsets"].dtype == torch.bfloat16
    assert reg.drawn.tolist() == [10 <= i < 42 for i in range(50)]  # starts drawn for the batch's images only
    fresh = NBC({"neighbours": "persistent"}, weight=1.0)
    fresh.load_state(reg.state())
    assert torch.equal(fresh.offsets, reg.offsets) and torch.equal(fresh.drawn, reg.drawn)
    old = NBC({"neighbours": "persistent"}, weight=1.0)  # a checkpoint from before per-image starts
    old.load_state({"offsets": reg.offsets.to(torch.float16)})
    assert old.offsets.dtype == torch.bfloat16 and bool(old.drawn.all())
    later = Batch(x_all[:8], torch.zeros(8, dtype=torch.long), torch.arange(8), len(x_all), 2)
    reg.loss(net, later, AT_01)  # images 0-7 get their start now; the others keep theirs
    assert reg.drawn[:8].all() and reg.offsets[:8].abs().max() > 0 and torch.equal(reg.offsets[8:], moved[8:])


def test_nbc_every_k_skips_batches() -> None:
    from vfnn.train.objectives import Batch
    from vfnn.train.regularisers import NBC

    reg = NBC({"every": 3}, weight=1.0)
    x = torch.zeros(2, 1, 8, 8)
    active = [reg.active(Batch(x, torch.zeros(2, dtype=torch.long), step=s)) for s in range(7)]
    assert active == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("method, bound", [("crown-ibp", "crown-ibp"), ("crown-lbp", "crown-lbp")])
def test_certified_objectives_mix_their_linear_bound_with_ibp(net: torch.nn.Sequential, method: str,
                                                              bound: str) -> None:
    """L = kappa CE + (1 - kappa) CE(-(beta m_linear + (1 - beta) m_ibp)), with each method's own bound."""
    from vfnn.train.objectives import OBJECTIVES, Batch, margin_lower_bounds

    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    s = ScheduleValues(eps=0.05, target_eps=0.05, kappa=0.3, beta=0.6)
    loss, _ = OBJECTIVES[method].from_table({}).loss(net, Batch(x, y), s)
    m = 0.6 * margin_lower_bounds(net, x, y, 0.05, 10, bound) + 0.4 * margin_lower_bounds(net, x, y, 0.05, 10, "ibp")
    expected = 0.3 * F.cross_entropy(net(x), y) + 0.7 * F.cross_entropy(-m, y)
    assert torch.allclose(loss, expected, atol=1e-6)
