"""Bound propagation: soundness on sampled points, ordering of the methods, gradients, and
agreement with auto_LiRPA on stored reference values."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vfnn.bounds import METHODS, compute_bounds
from vfnn.errors import ModelError
from vfnn.layers import ParamRampModule
from vfnn.network import ElementwiseAffineModule

DATA = Path(__file__).parent / "data" / "lirpa_crown_reference.npz"


def _init(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 0.1))
    return model.double().eval()


def mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                      nn.Linear(12, 4))
    return _init(m, seed), (6,)


def cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Every module kind: normalisation, padded/strided convolutions, pooling, flatten."""
    g = torch.Generator().manual_seed(seed + 100)
    m = nn.Sequential(
        ElementwiseAffineModule(torch.rand(2, 9, 9, generator=g) + 0.5, torch.randn(2, 9, 9, generator=g) * 0.1),
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 2, stride=1, padding=1), nn.ReLU(),
        nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(45, 10), nn.ReLU(), nn.Linear(10, 3))
    m = _init(m, seed)
    return m, (2, 9, 9)


def ramp_mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """ParamRamp activations (lower lines with an intercept, bends of both signs of slope eta)."""
    g = torch.Generator().manual_seed(seed + 200)
    m = nn.Sequential(nn.Linear(6, 12), ParamRampModule(torch.rand(12, generator=g) * 0.8, 0.01),
                      nn.Linear(12, 10), ParamRampModule(torch.rand(10, generator=g) * 0.8, 0.0), nn.Linear(10, 4))
    return _init(m, seed), (6,)


def _forward_with_pre(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    pre = []
    for m in model:
        if isinstance(m, (nn.ReLU, ParamRampModule)):
            pre.append(x)
        x = m(x)
    return pre, x.flatten(1)


def _boxes(shape: tuple[int, ...], B: int, eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *shape, generator=g, dtype=torch.float64)
    r = eps * torch.rand(B, *shape, generator=g, dtype=torch.float64)
    return x - r, x + r


@pytest.mark.parametrize("builder", [mlp, cnn, ramp_mlp])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_points_lie_within_all_bounds(builder, seed: int) -> None:
    model, shape = builder(seed)
    B, n = 3, 4000
    lower, upper = _boxes(shape, B, 0.3, seed)
    n_out = model(lower).flatten(1).shape[1]
    C = torch.randn(B, 5, n_out, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    methods = [m for m in METHODS if builder is not ramp_mlp or m != "alpha-crown"]  # alpha: ReLU only
    results = {m: compute_bounds(model, lower, upper, C, method=m, alpha_steps=5) for m in methods}
    for m in ("crown", "crown-ibp", "lbp", "crown-lbp"):  # both lower lines
        other = "adaptive" if m in ("lbp", "crown-lbp") else "tight"
        results[f"{m}/{other}"] = compute_bounds(model, lower, upper, C, method=m, relaxation=other)
    g = torch.Generator().manual_seed(seed + 7)
    for b in range(B):
        u = torch.rand(n, *shape, generator=g, dtype=torch.float64)
        u[: n // 4] = torch.round(u[: n // 4])  # vertices of the box, where extremes are often attained
        x = lower[b] + u * (upper[b] - lower[b])
        with torch.no_grad():
            pre, y = _forward_with_pre(model, x)
        cy = y @ C[b].T
        for method, res in results.items():
            assert len(res.pre_activation) == len(pre)
            for (lo, hi), z in zip(res.pre_activation, pre, strict=True):
                assert lo.shape == (B, *z.shape[1:])
                assert torch.all(z >= lo[b] - 1e-9), method
                assert torch.all(z <= hi[b] + 1e-9), method
            assert torch.all(cy >= res.lower[b] - 1e-9), method
            assert torch.all(cy <= res.upper[b] + 1e-9), method


@pytest.mark.parametrize("builder", [mlp, cnn, ramp_mlp])
@pytest.mark.parametrize("method", ["crown", "crown-ibp", "crown-lbp"])
def test_lower_lines_bound_sampled_points_and_give_the_crown_bound(builder, method: str) -> None:
    """``lines=True``: ``A x + bias <= C f(x)`` on sampled points of each box, and the minimum of
    the lines over the box is the raw CROWN lower bound (the one before intersecting with IBP)."""
    model, shape = builder(3)
    B = 3
    lower, upper = _boxes(shape, B, 0.3, 3)
    n_out = model(lower).flatten(1).shape[1]
    C = torch.randn(B, 4, n_out, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = compute_bounds(model, lower, upper, C, method=method, lines=True, intersect_ibp=False)
    A, bias = res.lower_lines
    lo, hi = lower.flatten(1), upper.flatten(1)
    at_min = (A.clamp(min=0) * lo.unsqueeze(1) + A.clamp(max=0) * hi.unsqueeze(1)).sum(-1) + bias
    assert torch.allclose(at_min, res.lower, atol=1e-9)
    g = torch.Generator().manual_seed(9)
    for b in range(B):
        x = lower[b] + torch.rand(2000, *shape, generator=g, dtype=torch.float64) * (upper[b] - lower[b])
        with torch.no_grad():
            cy = model(x).flatten(1) @ C[b].T
        assert torch.all(cy >= x.flatten(1) @ A[min(b, A.shape[0] - 1)].T + bias[min(b, bias.shape[0] - 1)] - 1e-9)
    with pytest.raises(ValueError, match="lines"):
        compute_bounds(model, lower, upper, C, method="ibp", lines=True)


@pytest.mark.parametrize("builder", [mlp, cnn])
def test_known_bounds_of_an_enclosing_box_tighten_crown_soundly(builder) -> None:
    """``known`` = the CROWN bounds of an enclosing box (what an input split inherits): each half's
    pre-activation bounds lie within them (so the neurons they prove stable stay stable; without
    ``known`` they do not, somewhere), and its output bounds still hold on sampled points."""
    model, shape = builder(7)
    lower, upper = _boxes(shape, 2, 0.4, 7)
    parent = compute_bounds(model, lower, upper, method="crown")
    j = int((upper - lower).flatten(1)[0].argmax())  # bisect along one input, as the split search does
    mid_lo, mid_hi = lower.flatten(1).clone(), upper.flatten(1).clone()
    mid_lo[:, j] = mid_hi[:, j] = (lower.flatten(1)[:, j] + upper.flatten(1)[:, j]) / 2
    outside = False
    for lo, hi in ((lower, mid_hi.reshape(lower.shape)), (mid_lo.reshape(lower.shape), upper)):
        plain = compute_bounds(model, lo, hi, method="crown")
        given = compute_bounds(model, lo, hi, method="crown", known=parent.pre_activation)
        for (gl, gu), (pl, pu), (kl, ku) in zip(given.pre_activation, plain.pre_activation, parent.pre_activation,
                                                strict=True):
            assert torch.all(gl >= kl) and torch.all(gu <= ku)
            outside |= bool(torch.any(pl < kl) or torch.any(pu > ku))
        g = torch.Generator().manual_seed(1)
        for b in range(2):
            x = lo[b] + torch.rand(500, *shape, generator=g, dtype=torch.float64) * (hi[b] - lo[b])
            with torch.no_grad():
                y = model(x).flatten(1)
            assert torch.all(y >= given.lower[b] - 1e-9) and torch.all(y <= given.upper[b] + 1e-9)
    assert outside, "the enclosing box's bounds never mattered here: the test no longer exercises known"
    with pytest.raises(ValueError, match="known"):
        compute_bounds(model, lower, upper, method="ibp", known=parent.pre_activation)


@pytest.mark.parametrize("builder", [mlp, cnn])
def test_crown_never_looser_than_ibp_and_alpha_never_looser_than_crown(builder) -> None:
    model, shape = builder(5)
    lower, upper = _boxes(shape, 4, 0.5, 5)
    ibp = compute_bounds(model, lower, upper, method="ibp")
    crown = compute_bounds(model, lower, upper, method="crown")
    alpha = compute_bounds(model, lower, upper, method="alpha-crown", alpha_steps=10)
    assert torch.all(crown.lower >= ibp.lower) and torch.all(crown.upper <= ibp.upper)
    assert torch.all(alpha.lower >= crown.lower) and torch.all(alpha.upper <= crown.upper)
    for (al, au), (cl, cu) in zip(alpha.pre_activation, crown.pre_activation, strict=True):
        assert torch.all(al >= cl) and torch.all(au <= cu)
    # the optimisation does something on this network
    assert float((alpha.lower - crown.lower).sum().detach() + (crown.upper - alpha.upper).sum().detach()) > 1e-6
    # and CROWN itself is a real improvement over IBP here, not just the intersection
    assert float((crown.upper - crown.lower).sum().detach()) < float((ibp.upper - ibp.lower).sum().detach())


_ORDER = ("ibp", "lbp", "crown-lbp", "crown")


def _assert_theorem_2(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None) -> None:
    """Lyu et al.'s Theorem 2 with tight lines: IBP <= LBP <= CROWN-LBP <= CROWN (lower bounds;
    the mirror for upper bounds), and IBP <= LBP on every pre-activation bound."""
    res = {m: compute_bounds(model, lower, upper, C, method=m, relaxation="tight", intersect_ibp=False)
           for m in _ORDER}
    for looser, tighter in zip(_ORDER, _ORDER[1:], strict=False):
        assert torch.all(res[tighter].lower >= res[looser].lower - 1e-6), (looser, tighter)
        assert torch.all(res[tighter].upper <= res[looser].upper + 1e-6), (looser, tighter)
    for (il, iu), (ll, lu) in zip(res["ibp"].pre_activation, res["lbp"].pre_activation, strict=True):
        assert torch.all(ll >= il - 1e-6) and torch.all(lu <= iu + 1e-6)
    # a strict improvement somewhere, so the ordering is not vacuous
    assert float((res["lbp"].lower - res["ibp"].lower).sum().detach()) > 1e-3


@pytest.mark.parametrize("builder", [mlp, cnn, ramp_mlp])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_theorem_2_ordering_with_tight_lines_on_random_nets(builder, seed: int) -> None:
    model, shape = builder(seed)
    lower, upper = _boxes(shape, 3, 0.3, seed)
    n_out = model(lower).flatten(1).shape[1]
    C = torch.randn(3, 4, n_out, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _assert_theorem_2(model, lower, upper, C)
    _assert_theorem_2(model, lower, upper, None)


def _trained(builder, method: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:  # noqa: ANN001
    """A net trained briefly on a toy task with the CE loss, or CE plus IBP's robust loss at
    eps 0.02 (certified-training-like weights, where CROWN's adaptive lines can be looser than IBP)."""
    model, shape = builder(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, *shape, generator=g, dtype=torch.float64)
    n_out = model(x[:1]).flatten(1).shape[1]
    y = x.flatten(1)[:, :n_out].argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    eye = torch.eye(n_out, dtype=torch.float64)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).flatten(1), y)
        if method == "ibp":  # worst-case logits from IBP bounds of the margins y_true - y_j
            C = eye[y].unsqueeze(1) - eye.unsqueeze(0)
            worst = -compute_bounds(model, x - 0.02, x + 0.02, C, method="ibp").lower
            loss = loss + nn.functional.cross_entropy(worst, y)
        loss.backward()
        opt.step()
    return model.eval(), shape


@pytest.mark.parametrize("builder", [mlp, cnn, ramp_mlp])
@pytest.mark.parametrize("method", ["ce", "ibp"])
def test_theorem_2_ordering_with_tight_lines_on_trained_nets(builder, method: str) -> None:
    model, shape = _trained(builder, method, 11)
    lower, upper = _boxes(shape, 4, 0.3, 12)
    n_out = model(lower).flatten(1).shape[1]
    C = torch.randn(4, 5, n_out, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    _assert_theorem_2(model, lower, upper, C)


def test_default_lower_lines_and_tight_crown() -> None:
    """lbp/crown-lbp default to tight lines, the others to CROWN's adaptive ones (auto_LiRPA's)."""
    model, shape = mlp(4)
    lower, upper = _boxes(shape, 3, 0.3, 4)
    for method, default in (("lbp", "tight"), ("crown-lbp", "tight"), ("crown", "adaptive"),
                            ("crown-ibp", "adaptive")):
        a = compute_bounds(model, lower, upper, method=method)
        b = compute_bounds(model, lower, upper, method=method, relaxation=default)
        assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper), method
    tight = compute_bounds(model, lower, upper, method="crown", relaxation="tight", intersect_ibp=False)
    adaptive = compute_bounds(model, lower, upper, method="crown", intersect_ibp=False)
    assert not torch.equal(tight.lower, adaptive.lower)
    with pytest.raises(ValueError, match="unknown relaxation"):
        compute_bounds(model, lower, upper, method="crown", relaxation="loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown intermediate rule"):
        compute_bounds(model, lower, upper, method="crown", intermediate="some")  # type: ignore[arg-type]


def test_exact_box_gives_exact_output() -> None:
    model, shape = cnn(3)
    x = torch.rand(2, *shape, dtype=torch.float64)
    y = model(x).flatten(1)
    for method in METHODS:
        b = compute_bounds(model, x, x.clone(), method=method)
        assert torch.allclose(b.lower, y, atol=1e-9) and torch.allclose(b.upper, y, atol=1e-9)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "lbp", "crown-lbp"])
def test_bounds_are_differentiable_wrt_parameters(method: str) -> None:
    model, shape = cnn(4)
    model = model.float().train()
    lower, upper = (t.float() for t in _boxes(shape, 3, 0.2, 4))
    C = torch.randn(3, 2, 3)
    res = compute_bounds(model, lower, upper, C, method=method)
    loss = -res.lower.sum() + sum(torch.tanh(1 + lo * hi).sum() for lo, hi in res.pre_activation)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_alpha_crown_leaves_parameter_gradients_alone() -> None:
    model, shape = mlp(1)
    lower, upper = _boxes(shape, 2, 0.3, 1)
    compute_bounds(model, lower, upper, method="alpha-crown", alpha_steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_shared_and_per_box_C_agree_and_C_none_bounds_outputs() -> None:
    model, shape = mlp(2)
    lower, upper = _boxes(shape, 3, 0.2, 2)
    C = torch.randn(2, 4, dtype=torch.float64)
    shared = compute_bounds(model, lower, upper, C)
    per_box = compute_bounds(model, lower, upper, C.expand(3, 2, 4))
    assert torch.allclose(shared.lower, per_box.lower) and torch.allclose(shared.upper, per_box.upper)
    eye = compute_bounds(model, lower, upper, None)
    rows = compute_bounds(model, lower, upper, torch.eye(4, dtype=torch.float64))
    assert eye.lower.shape == (3, 4)
    assert torch.allclose(eye.lower, rows.lower) and torch.allclose(eye.upper, rows.upper)


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases_no_relu_and_no_rows(method: str) -> None:
    lin = _init(nn.Sequential(nn.Flatten(), nn.Linear(6, 3)), 0)
    lower, upper = _boxes((2, 3), 2, 0.3, 0)
    b = compute_bounds(lin, lower, upper, method=method)
    assert b.pre_activation == []
    # an affine map's bounds are exact: centre image -+ |W| radius
    mid = lin((lower + upper) / 2)
    rad = ((upper - lower).flatten(1) / 2) @ lin[1].weight.abs().T
    assert torch.allclose(b.lower, mid - rad) and torch.allclose(b.upper, mid + rad)
    model, shape = mlp(0)
    lower, upper = _boxes(shape, 2, 0.3, 0)
    empty = compute_bounds(model, lower, upper, torch.zeros(0, 4, dtype=torch.float64), method=method)
    assert empty.lower.shape == (2, 0) and empty.upper.shape == (2, 0)


def test_unsupported_module_is_a_model_error() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ModelError, match="Tanh"):
        compute_bounds(model, torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="unknown bound method"):
        compute_bounds(model, torch.zeros(1, 3), torch.ones(1, 3), method="lp")  # type: ignore[arg-type]


# The reference file holds two float32 networks (an MLP 12-24x3-5 and a CNN with padding, stride,
# average pooling and flatten), boxes, per-box C matrices, and the bounds auto_LiRPA 0.7.0 (the copy
# inside alpha-beta-CROWN, Dec 2025 release) computed for them with
# BoundedModule(model, x0).compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(x_L=lo, x_U=hi)),),
# method=m, C=C) for m in ("IBP", "CROWN"), the pre-activation bounds read from each BoundRelu's
# input node.  It was generated once outside the repository.
def _reference_model(tag: str) -> nn.Module:
    if tag == "mlp":
        return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                             nn.Linear(24, 5))
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=1, padding=1),
                         nn.ReLU(), nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 5))


def _load_reference(tag: str) -> tuple[dict, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    ref = dict(np.load(DATA))
    model = _reference_model(tag)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.from_numpy(ref[f"{tag}/param{i}"]))
    lower, upper, C = (torch.from_numpy(ref[f"{tag}/{k}"]) for k in ("lower", "upper", "C"))
    return ref, model, lower, upper, C


@pytest.mark.parametrize("tag", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_matches_auto_lirpa_reference(tag: str, method: str) -> None:
    """auto_LiRPA's own rule for the refined neurons (the batch's union) gives its numbers exactly."""
    ref, model, lower, upper, C = _load_reference(tag)
    res = compute_bounds(model, lower, upper, C, method=method, intersect_ibp=False, intermediate="batch-union")
    key = f"{tag}/{method.upper()}"
    scale = max(1.0, float(np.abs(ref[f"{key}/upper"]).max()))
    assert np.abs(res.lower.detach().numpy() - ref[f"{key}/lower"]).max() <= 1e-5 * scale
    assert np.abs(res.upper.detach().numpy() - ref[f"{key}/upper"]).max() <= 1e-5 * scale
    for j, (lo, hi) in enumerate(res.pre_activation):
        np.testing.assert_allclose(lo.detach().numpy(), ref[f"{key}/pre{j}_lower"], atol=1e-5 * scale, rtol=0)
        np.testing.assert_allclose(hi.detach().numpy(), ref[f"{key}/pre{j}_upper"], atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("tag", ["mlp", "cnn"])
def test_per_box_crown_against_auto_lirpa_reference(tag: str) -> None:
    """The default (per-box) rule is auto_LiRPA's rule applied to each box alone, plus the
    intersection with the reference (which does not bite on these nets): so it equals
    ``batch-union`` run box by box, and against auto_LiRPA's batched numbers it is never looser on
    the outputs nor on any neuron it leaves unstable; it is looser only on neurons stable for
    the box that auto_LiRPA refined because a batch-mate needed them."""
    ref, model, lower, upper, C = _load_reference(tag)
    with torch.no_grad():
        res = compute_bounds(model, lower, upper, C, method="crown", intersect_ibp=False)
    for b in range(lower.shape[0]):
        alone = compute_bounds(model, lower[b: b + 1], upper[b: b + 1], C[b: b + 1], method="crown",
                               intersect_ibp=False, intermediate="batch-union")
        for (pl, pu), (al, au) in zip(res.pre_activation, alone.pre_activation, strict=True):
            assert torch.allclose(pl[b: b + 1], al, atol=1e-5) and torch.allclose(pu[b: b + 1], au, atol=1e-5)
        assert torch.allclose(res.lower[b: b + 1], alone.lower, atol=1e-5)
    scale = max(1.0, float(np.abs(ref[f"{tag}/CROWN/upper"]).max()))
    tol = 1e-5 * scale
    assert np.all(res.lower.numpy() >= ref[f"{tag}/CROWN/lower"] - tol)
    assert np.all(res.upper.numpy() <= ref[f"{tag}/CROWN/upper"] + tol)
    looser_somewhere = False
    for j, (lo, hi) in enumerate(res.pre_activation):
        lo, hi = lo.numpy(), hi.numpy()
        rl, ru = ref[f"{tag}/CROWN/pre{j}_lower"], ref[f"{tag}/CROWN/pre{j}_upper"]
        looser = (lo < rl - tol) | (hi > ru + tol)
        looser_somewhere |= bool(looser.any())
        stable = (lo >= 0) | (hi <= 0)
        assert np.all(stable[looser]), j
        assert np.all(((lo >= 0) == (rl >= 0))[looser]) and np.all(((hi <= 0) == (ru <= 0))[looser]), j
    assert looser_somewhere  # the fixture's batch does exercise the difference


def _varied_boxes(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes with different centres and radii: unstable shares from ~0 to 100% of a layer, so
    their CROWN sets differ and at least one box is past the 90% switch where another is not."""
    radii = [0.005, 0.03, 0.1, 0.3, 3.0, 0.05]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(radii), *shape, generator=g, dtype=torch.float64)
    r = torch.tensor(radii, dtype=torch.float64).reshape(-1, *[1] * len(shape))
    return x - r, x + r


@pytest.mark.parametrize("builder", [mlp, cnn, ramp_mlp])
def test_bounds_do_not_depend_on_batch_mates(builder, monkeypatch: pytest.MonkeyPatch) -> None:
    import vfnn.bounds.propagate as propagate

    model, shape = builder(0)
    lower, upper = _varied_boxes(shape, 1)
    B = lower.shape[0]
    n_out = model(lower).flatten(1).shape[1]
    C = torch.randn(B, 3, n_out, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    shares: list[list[float]] = []
    take = propagate._take_crown

    def spy(rule: str, unstable: torch.Tensor) -> torch.Tensor:
        shares.append(unstable.double().mean(1).tolist())
        return take(rule, unstable)

    monkeypatch.setattr(propagate, "_take_crown", spy)
    methods = [m for m in METHODS if builder is not ramp_mlp or m != "alpha-crown"]
    for method in methods:
        for relaxation in ("adaptive", "tight"):
            kw = {"method": method, "relaxation": relaxation, "alpha_steps": 4}
            batch = compute_bounds(model, lower, upper, C, **kw)
            for b in range(B):
                one = compute_bounds(model, lower[b: b + 1], upper[b: b + 1], C[b: b + 1], **kw)
                for (pl, pu), (ol, ou) in zip(batch.pre_activation, one.pre_activation, strict=True):
                    assert torch.allclose(pl[b: b + 1], ol, atol=1e-6, rtol=0), (method, relaxation, b)
                    assert torch.allclose(pu[b: b + 1], ou, atol=1e-6, rtol=0), (method, relaxation, b)
                assert torch.allclose(batch.lower[b: b + 1], one.lower, atol=1e-6, rtol=0), (method, relaxation, b)
                assert torch.allclose(batch.upper[b: b + 1], one.upper, atol=1e-6, rtol=0), (method, relaxation, b)
            if method in ("crown", "alpha-crown"):  # and sound on points of each box
                g = torch.Generator().manual_seed(3)
                for b in range(B):
                    u = torch.rand(300, *shape, generator=g, dtype=torch.float64)
                    u[:100] = torch.round(u[:100])
                    with torch.no_grad():
                        pre, y = _forward_with_pre(model, lower[b] + u * (upper[b] - lower[b]))
                    for (lo, hi), z in zip(batch.pre_activation, pre, strict=True):
                        assert torch.all(z >= lo[b] - 1e-9) and torch.all(z <= hi[b] + 1e-9), method
                    cy = y @ C[b].T
                    assert torch.all(cy >= batch.lower[b] - 1e-9) and torch.all(cy <= batch.upper[b] + 1e-9), method
    # the batch crossed the sparse/dense switch: in some layer one box was past 90% and another not
    assert any(max(s) > propagate.SPARSE_FRACTION >= min(s) for s in shares)


@pytest.mark.parametrize("builder", [mlp, cnn])
@pytest.mark.parametrize("trained", [None, "ibp"])
def test_pre_activation_bounds_never_looser_than_ibp(builder, trained: str | None) -> None:
    """Per neuron, CROWN and alpha-CROWN are never looser than IBP, also with CROWN's adaptive
    lines on IBP-trained weights, where raw CROWN often is looser."""
    model, shape = builder(0) if trained is None else _trained(builder, trained, 11)
    lower, upper = _varied_boxes(shape, 4)
    ibp = compute_bounds(model, lower, upper, method="ibp")
    for method in ("crown", "alpha-crown"):
        for relaxation in ("adaptive", "tight"):
            res = compute_bounds(model, lower, upper, method=method, relaxation=relaxation, alpha_steps=4)
            for (il, iu), (cl, cu) in zip(ibp.pre_activation, res.pre_activation, strict=True):
                assert torch.all(cl >= il - 1e-9) and torch.all(cu <= iu + 1e-9), (method, relaxation)
            assert torch.all(res.lower >= ibp.lower - 1e-9) and torch.all(res.upper <= ibp.upper + 1e-9)


@pytest.mark.parametrize("builder", [mlp, cnn])
@pytest.mark.parametrize("trained", [None, "ibp"])
def test_tight_lines_match_pure_crown_where_it_matters(builder, trained: str | None) -> None:
    """With tight lines, per-box CROWN gives pure CROWN's (every neuron, no reference) output bounds
    and the bounds of every unstable neuron; only neurons stable under their reference keep the
    reference, which can be looser than pure CROWN there (what the sparse refinement saves).  With
    adaptive lines this is not guaranteed (docs/bounds.md has the measurements)."""
    model, shape = builder(1) if trained is None else _trained(builder, trained, 11)
    lower, upper = _varied_boxes(shape, 5)
    kw = {"method": "crown", "relaxation": "tight", "intersect_ibp": False}
    ours = compute_bounds(model, lower, upper, **kw)
    pure = compute_bounds(model, lower, upper, intermediate="full", **kw)
    assert torch.allclose(ours.lower, pure.lower, atol=1e-8) and torch.allclose(ours.upper, pure.upper, atol=1e-8)
    for (ol, ou), (pl, pu) in zip(ours.pre_activation, pure.pre_activation, strict=True):
        unstable = (ol < 0) & (ou > 0)
        assert torch.equal(unstable, (pl < 0) & (pu > 0))
        assert torch.allclose(ol[unstable], pl[unstable], atol=1e-8) and torch.allclose(ou[unstable], pu[unstable],
                                                                                        atol=1e-8)
        assert torch.all(ol <= pl + 1e-8) and torch.all(ou >= pu - 1e-8)  # the reference is kept elsewhere


def deep_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Windows that outgrow their maps (rows turn dense mid-way), batch-norm, ParamRamp on maps,
    pooling between convolutions, a convolution's bias seen through a padded one (no activation
    between) and odd, non-square shapes."""
    g = torch.Generator().manual_seed(seed + 300)
    bn = nn.BatchNorm2d(6)
    m = nn.Sequential(
        ElementwiseAffineModule(torch.rand(3, 11, 10, generator=g) + 0.5, torch.randn(3, 11, 10, generator=g) * 0.1),
        nn.Conv2d(3, 6, 3, stride=1, padding=2), nn.ReLU(), bn,
        nn.Conv2d(6, 5, 4, stride=2, padding=1), ParamRampModule(torch.rand(5, 6, 6, generator=g), 0.01),
        nn.AvgPool2d(2, 1), nn.Conv2d(5, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    m = _init(m, seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6, generator=g, dtype=torch.float64) * 0.1)
        bn.running_var.copy_(torch.rand(6, generator=g, dtype=torch.float64) + 0.5)
    return m, (3, 11, 10)


@pytest.mark.parametrize("builder", [cnn, deep_cnn])
@pytest.mark.parametrize("seed", [0, 1])
def test_patches_rows_equal_dense_rows(builder, seed: int) -> None:
    """Rows of image layers carried as patches (and turned dense where a window outgrows its map)
    bound every neuron exactly as dense back-substitution does, box by box."""
    from math import prod

    from vfnn.bounds.plan import make_plan
    from vfnn.bounds.propagate import backward_bounds, crown_intermediate, patch_bounds

    model, shape = builder(seed)
    plan = make_plan(model, shape)
    lo, hi = _boxes(shape, 3, 0.3, seed)
    _, relax = crown_intermediate(plan, lo, hi)
    center, diff = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    g = torch.Generator().manual_seed(seed)
    checked = 0
    for i in range(plan.n_relu):
        out = plan.chain_out_shape(i)
        if len(out) != 3:
            continue
        n = prod(out)
        rows = torch.randperm(n, generator=g)[: min(n, 40)]
        eye = torch.zeros(rows.numel(), n, dtype=torch.float64)
        eye[torch.arange(rows.numel()), rows] = 1.0
        want = backward_bounds(plan, relax, i, eye.reshape(1, 1, rows.numel(), *out), center, diff)
        got = patch_bounds(plan, relax, i, rows, center, diff)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-10), (i, (a - b).abs().max())
        assert (want[1] - want[0]).min() > 0  # not a degenerate comparison
        checked += 1
    assert checked == (2 if builder is cnn else 4)


@pytest.mark.parametrize(("channels", "hw", "kernel", "stride", "padding", "in_hw"), [
    ((5, 1), (4, 4), 3, (2, 2), (1, 1), (8, 8)),  # GEMM + col2im: few input channels, output padding
    ((5, 2), (1, 1), 3, (2, 1), (0, 0), (3, 3)),  # from a 1x1 map
    ((3, 8), (5, 3), 2, (1, 2), (1, 0), (4, 7)),  # torch's transposed convolution, output padding
])
def test_transposed_conv_is_the_transpose_of_the_convolution(channels, hw, kernel, stride, padding, in_hw) -> None:
    """<A, conv(x)> = <transposed_conv(A), x> for both ways of computing it."""
    import torch.nn.functional as F

    from vfnn.layers.conv import transposed_conv

    co, ci = channels
    g = torch.Generator().manual_seed(0)
    w = torch.randn(co, ci, kernel, kernel, generator=g, dtype=torch.float64)
    x = torch.randn(2, ci, *in_hw, generator=g, dtype=torch.float64)
    y = F.conv2d(x, w, None, stride, padding)
    assert y.shape[-2:] == hw
    A = torch.randn(2, co, *hw, generator=g, dtype=torch.float64)
    back = transposed_conv(A, w, stride, padding, in_hw)
    assert back.shape == x.shape
    assert torch.allclose((A * y).sum((1, 2, 3)), (back * x).sum((1, 2, 3)), atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    model, shape = cnn(6)
    lower, upper = _boxes(shape, 3, 0.2, 6)
    for method in METHODS:
        cpu = compute_bounds(model, lower, upper, method=method, alpha_steps=3)
        gpu = compute_bounds(model.cuda(), lower.cuda(), upper.cuda(), method=method, alpha_steps=3)
        model.cpu()
        assert gpu.lower.is_cuda
        assert torch.allclose(cpu.lower, gpu.lower.cpu(), atol=1e-8) and torch.allclose(cpu.upper, gpu.upper.cpu(),
                                                                                         atol=1e-8)


def test_the_first_bound_computation_imports_no_more_of_torch() -> None:
    """A lazy import on the first call is paid by every fresh `vfnn verify` and every served child
    (torch.broadcast_shapes pulled in ~490 modules, 0.5 s)."""
    import subprocess
    import sys

    code = ("import sys, torch, onnx\nfrom torch import nn\nfrom vfnn.bounds import METHODS, compute_bounds\n"
            "m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\nbefore = set(sys.modules)\n"
            "for method in METHODS:\n    compute_bounds(m, torch.zeros(2, 4), torch.ones(2, 4), None, method=method)\n"
            "print(sorted(n for n in set(sys.modules) - before if n.startswith(('torch', 'sympy'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
