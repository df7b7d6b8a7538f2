"""The method itself: LS/MaxSup identities (paper §3), gradients (Eq. 9), schedule, baselines, bad input."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from maxsup import (
    AlphaSchedule,
    LabelSmoothingLoss,
    MaxSupLoss,
    build_criterion,
    label_smoothing_penalty,
    ls_decomposition,
    maxsup_penalty,
)
from maxsup.losses import (
    CRITERIA,
    LOSSES,
    AdaptiveLabelSmoothingLoss,
    Loss,
    MaxSupAdaptiveLoss,
    OnlineLabelSmoothingLoss,
    PenaltyStatsMeter,
    ZipfLabelSmoothingLoss,
    compute_loss,
    entropy_alpha,
    loss_defaults,
    parse_loss_options,
    penalty_stats,
    register_loss,
)
from maxsup.models import create_model, logits_and_dense_logits


def _batch(b=16, k=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.37])
def test_ls_matches_torch_label_smoothing(alpha):
    z, y = _batch()
    loss = LabelSmoothingLoss(alpha, alpha, epochs=1)
    assert torch.allclose(loss(z, y), F.cross_entropy(z, y, label_smoothing=alpha), atol=1e-6)


def test_ls_penalty_is_theorem_3_3_and_mixup_eq_27():
    z, y = _batch(b=8, k=6, seed=1)
    y2 = torch.roll(y, 1)
    lam, alpha, k = 0.7, 0.15, 6
    t = lam * F.one_hot(y, k).float() + (1 - lam) * F.one_hot(y2, k).float()  # Mixup target
    s = (1 - alpha) * t + alpha / k  # smoothed Mixup target (timm mixup_target with smoothing)
    soft_ce = -(s * F.log_softmax(z, -1)).sum(-1)
    hard_ce = -(t * F.log_softmax(z, -1)).sum(-1)
    expected = lam * z.gather(1, y[:, None]).squeeze(1) + (1 - lam) * z.gather(1, y2[:, None]).squeeze(1) - z.mean(-1)
    assert torch.allclose(label_smoothing_penalty(z, t), expected, atol=1e-5)
    assert torch.allclose(soft_ce, hard_ce + alpha * expected, atol=1e-5)
    assert torch.allclose(LabelSmoothingLoss(alpha, alpha)(z, t), soft_ce.mean(), atol=1e-5)


def test_maxsup_equals_ls_when_top1_is_correct():
    z, _ = _batch(b=32, k=7, seed=2)
    y = z.argmax(-1)
    ls, ms = LabelSmoothingLoss(0.1, 0.2, epochs=5), MaxSupLoss(0.1, 0.2, epochs=5)
    for e in (0, 2, 4):
        ls.set_epoch(e)
        ms.set_epoch(e)
        assert torch.allclose(ls(z, y), ms(z, y), atol=1e-6)
    y_wrong = (y + 1) % 7  # now every sample is misclassified: MaxSup penalises z_max, LS penalises z_gt
    assert not torch.allclose(ls(z, y_wrong), ms(z, y_wrong))
    assert torch.all(maxsup_penalty(z) > label_smoothing_penalty(z, y_wrong))


def test_maxsup_gradient_matches_eq_9():
    z, y = _batch(b=5, k=8, seed=3)
    z.requires_grad_(True)
    alpha, k = 0.2, 8
    (alpha * maxsup_penalty(z).sum()).backward()
    expected = torch.full_like(z, -alpha / k)
    expected[torch.arange(5), z.detach().argmax(-1)] = alpha * (1 - 1 / k)
    assert torch.allclose(z.grad, expected, atol=1e-6)
    # total gradient for a misclassified sample (App. C): ∂_gt = q_gt − (1 + α/K)
    z2 = z.detach().clone().requires_grad_(True)
    y_wrong = (z2.argmax(-1) + 1) % k
    MaxSupLoss(alpha, alpha)(z2, y_wrong).backward()
    q = F.softmax(z2.detach(), -1)
    g_gt = z2.grad[torch.arange(5), y_wrong] * 5  # undo the batch mean
    assert torch.allclose(g_gt, q[torch.arange(5), y_wrong] - (1 + alpha / k), atol=1e-5)


def test_decomposition_sums_to_ls_penalty_and_signs():
    z, y = _batch(b=64, k=12, seed=4)
    d = ls_decomposition(z, y)
    assert torch.allclose(d["regularization"] + d["error_amplification"], label_smoothing_penalty(z, y), atol=1e-5)
    assert torch.all(d["regularization"] >= 0) and torch.all(d["error_amplification"] <= 0)
    correct = z.argmax(-1) == y
    assert correct.any() and (~correct).any()
    assert torch.all(d["error_amplification"][correct] == 0)
    assert torch.all(d["error_amplification"][~correct] < 0)
    # Table 1 variants: normalised by M and N, and z_gt − z_max
    z_gt = z.gather(1, y[:, None])
    m = (z < z_gt).sum(-1).clamp_min(1)
    assert torch.allclose(d["regularization_only"], d["regularization"] * 12 / m, atol=1e-5)
    assert torch.allclose(d["error_amplification_alt"], z_gt.squeeze(1) - z.max(-1).values)


def test_alpha_schedule_endpoints_and_fractional_epochs():
    s = AlphaSchedule(0.1, 0.2, epochs=300)
    assert s(0) == pytest.approx(0.1) and s(299) == pytest.approx(0.2)
    assert s(149.5) == pytest.approx(0.15)
    assert s(1) == pytest.approx(0.1 + 0.1 / 299)  # the authors' DeiT formula
    assert AlphaSchedule(0.1, 0.2, epochs=1)(0) == pytest.approx(0.1)
    m = MaxSupLoss(0.1, 0.2, epochs=11)
    m.set_epoch(5)
    assert m.alpha == pytest.approx(0.15)


def test_ols_soft_labels_change_after_an_epoch():
    k = 4
    ols = OnlineLabelSmoothingLoss(k)
    s0 = ols.soft_labels.clone()
    assert torch.allclose(s0.diagonal(), torch.full((k,), 0.9))
    z = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0], [3.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 3, 1])  # the last sample is wrong and must not count
    ols.train()
    before = ols(z, y)
    assert torch.allclose(ols.soft_labels, s0)  # the active matrix never changes mid-epoch
    ols.on_epoch_end()
    p = F.softmax(z, -1)
    assert torch.allclose(ols.soft_labels[0], p[0]) and torch.allclose(ols.soft_labels[1], p[1])
    assert torch.allclose(ols.soft_labels[2], torch.full((k,), 0.25))  # no correct sample: uniform row
    assert not torch.allclose(ols(z, y), before)
    state = ols.state_dict()
    fresh = OnlineLabelSmoothingLoss(k)
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.soft_labels, ols.soft_labels)


def test_zipf_target_ranks_with_min_ties_and_excludes_target():
    zipf = ZipfLabelSmoothingLoss(lam=0.1)
    z = torch.tensor([[3.0, 2.0, 2.0, 0.0]])
    p = zipf.zipf_target(z, torch.tensor([0]))
    w = torch.tensor([0.0, 1 / 2, 1 / 2, 1 / 4])  # ranks 1, 2, 2, 4 ('min'); target dropped
    assert torch.allclose(p, w / w.sum())
    # dense mode: 4 positions vote 1, 1, 3, 0 → class 1 first (rank 1), 0 and 3 tie (rank 2), 2 last (rank 4)
    dense = torch.zeros(1, 4, 2, 2)
    for pos, cls in enumerate([1, 1, 3, 0]):
        dense[0, cls, pos // 2, pos % 2] = 1.0
    p = zipf.zipf_target(z, torch.tensor([2]), dense)
    w = torch.tensor([1 / 2, 1.0, 0.0, 1 / 2])
    assert torch.allclose(p, w / w.sum())
    loss = zipf(z, torch.tensor([0]))
    assert loss > F.cross_entropy(z, torch.tensor([0]))


@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_accepts_hard_soft_and_tuple_outputs(name):
    z, y = _batch(b=6, k=5, seed=5)
    crit = build_criterion(name, num_classes=5, epochs=3)
    crit.set_epoch(1)
    soft = F.one_hot(y, 5).float() * 0.8 + 0.04
    for out, t in ((z, y), (z, soft), ((z, z.flip(0)), y)):
        val = crit(out, t)
        assert val.dim() == 0 and torch.isfinite(val)
    assert torch.allclose(crit((z, z * 0), y), crit(z, y))  # tuple: class logits first (DeiT distillation)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e2, 6e4), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       name=st.sampled_from(["ls", "maxsup", "lp", "cp", "ols", "zipf", "logitnorm", "focal", "adaptive-ls",
                             "maxsup-adaptive"]))
def test_losses_finite_for_large_low_precision_logits(scale, dtype, name):
    z, y = _batch(b=8, k=1000, seed=6, scale=1.0)
    z = (z / z.abs().max() * scale).to(dtype)
    val = build_criterion(name, 1000, epochs=2)(z, y)
    assert val.dtype == torch.float32 and math.isfinite(val.item())


def test_penalty_under_cpu_bf16_autocast_is_float32():
    lin = torch.nn.Linear(16, 10)
    x, y = torch.randn(4, 16), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lin(x)
        loss = MaxSupLoss()(out, y)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert maxsup_penalty(out).dtype == torch.float32


def test_penalty_stats_reports_misclassified_fraction():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1])
    st_ = penalty_stats(z, y)
    assert st_["misclassified"] == pytest.approx(0.5)
    assert st_["maxsup_penalty"] == pytest.approx(1.0)
    assert st_["ls_error_amplification"] == pytest.approx(-0.5)  # two samples with (1/2)(0 − 2)
    # one wrong in four (a symmetric 2-of-4 case cannot tell "misclassified" from "correct"), and a Mixup target
    # counts as its arg-max class
    assert penalty_stats(z[:, [1, 0]], torch.tensor([1, 0, 0, 1]))["misclassified"] == pytest.approx(0.25)
    mixed = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])
    assert penalty_stats(z, mixed)["misclassified"] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [
    lambda: MaxSupLoss()(torch.randn(4, 5), torch.tensor([0, 1, 2])),
    lambda: MaxSupLoss()(torch.randn(4, 5), torch.randn(4, 6)),
    lambda: LabelSmoothingLoss()(torch.randn(2, 5), torch.tensor([0, 5])),
    lambda: build_criterion("focal-ls", 10),
    lambda: build_criterion("focal", 10, tau=0.1),  # an option the loss does not take
    lambda: build_criterion("ls", 10, alpha_denominator="T"),
    lambda: build_criterion("logitnorm", 10, tau=0.0),
    lambda: AlphaSchedule(0.1, 0.2, epochs=0),
    lambda: MaxSupAdaptiveLoss(alpha_max=-0.1),
    lambda: OnlineLabelSmoothingLoss(1),
    lambda: PenaltyStatsMeter(every=0),
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(ValueError, match="maxsup.*ols"):
        build_criterion("labelsmooth", 10)


# --------------------------------------------------------------------------------------------------------------------
# Precision, gradcheck and the fused CE + LS / CE + MaxSup op
# --------------------------------------------------------------------------------------------------------------------
def _frozen_alpha(crit, z):
    """Adaptive losses take α_i as a constant (stop-gradient, as designed); freeze it so gradcheck sees the loss."""
    if hasattr(crit, "alpha_max"):
        fixed = entropy_alpha(z.detach(), crit.alpha_max)
        crit._alpha = lambda _z: fixed
    return crit


@pytest.mark.parametrize("name", CRITERIA)
def test_gradcheck_float64_every_loss(name):
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    y = torch.randint(0, 5, (6,), generator=g)
    soft = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), -1)
    crit = _frozen_alpha(build_criterion(name, 5, epochs=4), z)
    crit.set_epoch(2)
    for t in (y, soft):
        assert crit(z, t).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda z_, t=t: crit(z_, t), (z,), fast_mode=True)
    assert maxsup_penalty(z).dtype == torch.float64 and label_smoothing_penalty(z, y).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_fused_ls_and_maxsup_match_the_composed_losses(dtype, soft):
    """Same value and gradient as CE + α·penalty written with autograd (the pre-fusion modules)."""
    g = torch.Generator().manual_seed(12)
    z0 = (torch.randn(33, 17, generator=g) * 4).to(dtype)
    y = torch.randint(0, 17, (33,), generator=g)
    t = torch.softmax(torch.randn(33, 17, generator=g, dtype=torch.float64) * 2, -1) if soft else y
    if soft and dtype != torch.float64:
        t = t.float()  # rows sum to 1 in the target's precision (the contract both forms rely on)
    for name, penalty in (("ls", lambda z: label_smoothing_penalty(z, t)), ("maxsup", maxsup_penalty)):
        crit = build_criterion(name, 17, epochs=7)
        crit.set_epoch(3.5)
        za, zb = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
        fused = crit(za, t)
        (fused * 3.0).backward()  # a non-unit upstream gradient (GradScaler, loss weights)
        ref_ce = F.cross_entropy(zb.float() if dtype != torch.float64 else zb, t.to(zb.dtype) if soft and dtype ==
                                 torch.float64 else t)
        composed = ref_ce + crit.alpha * penalty(zb).mean()
        (composed * 3.0).backward()
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        assert fused.dtype == composed.dtype and torch.allclose(fused, composed, atol=tol, rtol=tol)
        # bf16 gradients are rounded to 8 bits (the composed form also sums two rounded parts)
        atol = 1e-2 * zb.grad.float().abs().max().item() if dtype == torch.bfloat16 else 1e-7
        assert za.grad.dtype == dtype and torch.allclose(za.grad.float(), zb.grad.float(), rtol=1e-5, atol=atol)
    # per-sample α (maxsup-adaptive) is the same op with α_i
    z = z0.double().clone().requires_grad_(True)
    alpha = entropy_alpha(z, 0.2)
    expected = F.cross_entropy(z, t.double() if soft else t) + (alpha * maxsup_penalty(z)).mean()
    assert torch.allclose(build_criterion("maxsup-adaptive", 17)(z, t), expected, atol=1e-6)


def test_logitnorm_and_focal_values():
    z, y = _batch(b=10, k=6, seed=13)
    ln = build_criterion("logitnorm", 6, tau=0.5)
    expected = F.cross_entropy(z / (0.5 * (z.norm(dim=-1, keepdim=True) + 1e-7)), y)
    assert torch.allclose(ln(z, y), expected, atol=1e-6)
    assert torch.allclose(ln(z * 7.0, y), ln(z, y), atol=1e-5)  # only the direction of z matters
    focal = build_criterion("focal", 6)
    p_y = F.softmax(z, -1)[torch.arange(10), y]
    assert torch.allclose(focal(z, y), (-(1 - p_y) ** 2 * torch.log(p_y)).mean(), atol=1e-6)
    assert torch.allclose(build_criterion("focal", 6, gamma=0.0)(z, y), F.cross_entropy(z, y), atol=1e-6)
    assert torch.allclose(focal(z, F.one_hot(y, 6).float()), focal(z, y), atol=1e-6)  # soft one-hot = hard
    assert focal(z, y) < F.cross_entropy(z, y)  # down-weights every sample


def test_alpha_denominator_e_is_the_papers_t_over_T():
    paper = AlphaSchedule(0.1, 0.2, epochs=300, denominator="E")
    assert paper(0) == pytest.approx(0.1) and paper(150) == pytest.approx(0.15)
    assert paper(299) == pytest.approx(0.1 + 0.1 * 299 / 300)  # one step short of 0.2
    t15 = build_criterion("maxsup", 10, epochs=200, alpha_start=0.0, alpha_end=0.1, alpha_denominator="E")
    t15.set_epoch(100)
    assert t15.alpha == pytest.approx(0.05)


def test_entropy_alpha_range():
    k = 8
    uniform, peaked = torch.zeros(1, k), torch.tensor([[50.0] + [0.0] * (k - 1)])
    assert entropy_alpha(uniform, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_alpha(peaked, 0.2).item() == pytest.approx(0.2, abs=1e-6)
    mid = entropy_alpha(torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]), 0.2).item()
    assert 0 < mid < 0.2


def test_adaptive_ls_teacher_is_the_best_checkpoint_and_is_checkpointed():
    torch.manual_seed(14)
    student = torch.nn.Linear(4, 3)
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    crit = build_criterion("adaptive-ls", 3, model=student)
    z = student(x)
    alpha = entropy_alpha(z, 0.2)[:, None]
    # no validation yet: the prior is uniform, i.e. LS with the per-sample α
    t = F.one_hot(y, 3).float()
    assert torch.allclose(crit(z, y, inputs=x), F.cross_entropy(z, (1 - alpha) * t + alpha / 3), atol=1e-6)
    crit.on_eval(50.0)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        student.weight.add_(1.0)  # training moves on
    crit.on_eval(40.0)  # worse: the teacher stays at the 50% checkpoint
    assert torch.equal(crit.teacher.weight, snapshot["weight"])
    z = student(x)
    alpha = entropy_alpha(z, 0.2)[:, None]
    q = F.softmax(F.linear(x, snapshot["weight"], snapshot["bias"]), -1)
    loss = crit(z, y, inputs=x)
    assert torch.allclose(loss, F.cross_entropy(z, (1 - alpha) * t + alpha * q), atol=1e-6)
    loss.backward()
    assert crit.teacher.weight.grad is None and student.weight.grad is not None
    crit.on_eval(60.0)
    assert torch.equal(crit.teacher.weight, student.weight)
    # resume: a fresh criterion takes the teacher and its best score from the state dict
    fresh = AdaptiveLabelSmoothingLoss(torch.nn.Linear(4, 3))
    fresh.load_state_dict(crit.state_dict())
    assert torch.equal(fresh.teacher.weight, student.weight) and float(fresh.best_score) == 60.0
    assert torch.allclose(fresh(z, y, inputs=x), crit(z, y, inputs=x))
    fresh.on_eval(55.0)
    assert torch.equal(fresh.teacher.weight, student.weight)


def test_penalty_stats_meter_every_step():
    meter = PenaltyStatsMeter(every=1)
    batches = [_batch(b=b, k=5, seed=40 + i) for i, b in enumerate((3, 6))]
    assert [meter.update(i, z, y) for i, (z, y) in enumerate(batches)] == [True, True]
    assert meter.compute()["maxsup_penalty"] == pytest.approx(
        sum(maxsup_penalty(z).sum().item() for z, _ in batches) / 9, rel=1e-6)
    single, nothing = PenaltyStatsMeter(every=1), PenaltyStatsMeter(every=1)
    z, y = _batch(b=1, k=5, seed=42)
    single.update(0, z, y)
    assert single.compute() == pytest.approx(penalty_stats(z, y), rel=1e-6)  # a one-sample epoch is that sample
    assert set(nothing.compute().values()) == {0.0}


def test_penalty_stats_meter_every_n_steps_weights_by_batch():
    meter = PenaltyStatsMeter(every=2)
    batches = [_batch(b=b, k=5, seed=20 + i) for i, b in enumerate((4, 7, 3, 9, 5))]
    measured = [meter.update(i, z, y) for i, (z, y) in enumerate(batches)]
    assert measured == [True, False, True, False, True]
    out = meter.compute()
    for key in out:
        expected = sum(penalty_stats(*batches[i])[key] * batches[i][0].shape[0] for i in (0, 2, 4)) / 12
        assert out[key] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name, kwargs", [("resnet18", {}), ("cifar_resnet10", {"width": 8}),
                                          ("mobilenet_v2", {"width_mult": 0.25}),
                                          ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1})])
def test_per_position_logits(name, kwargs):
    torch.manual_seed(15)
    model = create_model(name, 7, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    out, dense = logits_and_dense_logits(model, x)
    assert torch.equal(out, model(x)) and not dense.requires_grad
    if name.startswith("vit"):
        assert dense.shape == (2, 7, 16)  # one column per patch token, the CLS token excluded
        tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
        assert torch.allclose(dense, model.head(model.fc_norm(tokens)).transpose(1, 2), atol=1e-5)
    else:
        assert dense.dim() == 4 and dense.shape[:2] == (2, 7)
        assert torch.allclose(dense.flatten(2).mean(-1), out, atol=1e-5)  # GAP and the head are linear
    # compute_loss hands them to Zipf-LS in dense mode
    y = torch.tensor([0, 3])
    zipf = build_criterion("zipf", 7, dense=True)
    outputs, loss = compute_loss(model, zipf, x, y)
    assert torch.allclose(loss, zipf(outputs, y, dense_logits=dense), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# The registry: one table, defaults read from each class's signature
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_defaults_are_the_class_signature_and_build_the_same_loss(name):
    cls = LOSSES[name]
    sig = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
           if k not in ("self", "num_classes", "epochs", "model")}
    assert loss_defaults(name) == sig
    z, y = _batch(b=6, k=5, seed=9)
    torch.manual_seed(0)
    implicit = build_criterion(name, 5, epochs=4)
    explicit = build_criterion(name, 5, epochs=4, **loss_defaults(name))
    for crit in (implicit, explicit):
        crit.set_epoch(2)
    assert type(implicit) is cls and torch.equal(implicit(z, y), explicit(z, y))


def test_loss_defaults_are_the_papers_values():
    for name in ("ls", "maxsup", "ls-reg", "ls-err", "ls-err-alt"):
        assert loss_defaults(name) == {"alpha_start": 0.1, "alpha_end": 0.2, "alpha_denominator": "E-1"}
    assert loss_defaults("lp") == {"beta": 2e-3}
    assert loss_defaults("zipf") == {"lam": 0.1, "power": 1.0, "dense": False}
    assert loss_defaults("ce") == {}
    sched = build_criterion("maxsup", 10, epochs=300).alpha_schedule
    assert (sched.start, sched.end, sched.epochs, sched.denominator) == (0.1, 0.2, 300, "E-1")
    assert build_criterion("lp", 10).beta == 2e-3
    assert loss_defaults("cp") == {"beta": 0.1}  # Table 13's Confidence Penalty (0.1)
    assert loss_defaults("focal") == {"gamma": 2.0} and loss_defaults("logitnorm") == {"tau": 0.04}
    assert loss_defaults("ols") == {"a": 0.5, "init_smoothing": 0.1}


def test_parse_loss_options_types_values_by_their_defaults():
    assert parse_loss_options("maxsup", ["alpha_end=0.3", "alpha-denominator=E", "alpha_start=0"]) == {
        "alpha_end": 0.3, "alpha_denominator": "E", "alpha_start": 0.0}
    opts = parse_loss_options("zipf", ["dense=true", "lam=0", "power=2.5"])
    assert opts == {"dense": True, "lam": 0.0, "power": 2.5}
    assert type(opts["lam"]) is float and opts["dense"] is True
    assert parse_loss_options("zipf", ["dense=False"]) == {"dense": False}
    assert parse_loss_options("ce", []) == {}
    assert build_criterion("zipf", 7, **opts).dense is True


@pytest.mark.parametrize("name, items, match", [
    ("focal", ["tau=0.1"], r"loss 'focal' has no option 'tau'; loss 'focal' takes gamma \(default 2.0\)"),
    ("ce", ["alpha_end=0.2"], "takes no options"),
    ("zipf", ["dense=maybe"], "expected a bool value"),
    ("lp", ["beta=small"], "expected a float value"),
    ("lp", ["beta"], "not KEY=VALUE"),
    ("lp", ["beta=1", "beta=2"], "given twice"),
    ("labelsmooth", [], "valid names: ce, ls, maxsup"),
])
def test_parse_loss_options_refuses_bad_items(name, items, match):
    with pytest.raises(ValueError, match=match):
        parse_loss_options(name, items)


class _TwoOptionLoss(Loss):
    def __init__(self, num_classes: int, weight: float = 0.5, steps: int = 3) -> None:
        super().__init__()
        self.num_classes, self.weight, self.steps = num_classes, weight, steps

    def forward(self, outputs, target):
        z, target = self._inputs(outputs, target)
        return self.weight * F.cross_entropy(z, target)


def test_register_loss_adds_a_class_and_refuses_duplicates_and_undefaulted_options():
    try:
        register_loss("test_two_option")(_TwoOptionLoss)
        assert "test-two-option" in CRITERIA  # CRITERIA is a live view of LOSSES
        assert loss_defaults("test-two-option") == {"weight": 0.5, "steps": 3}
        assert parse_loss_options("test-two-option", ["steps=7"]) == {"steps": 7}
        with pytest.raises(ValueError, match="expected a int value"):
            parse_loss_options("test-two-option", ["steps=0.5"])
        crit = build_criterion("test-two-option", 4, weight=2.0)
        assert (crit.num_classes, crit.weight, crit.steps) == (4, 2.0, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test-two-option")(_TwoOptionLoss)
    finally:
        LOSSES.pop("test-two-option", None)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("maxsup")(_TwoOptionLoss)

    class NoDefault(Loss):
        def __init__(self, beta: float) -> None:
            super().__init__()

    with pytest.raises(TypeError, match="needs a bool/int/float/str default"):
        register_loss("no-default")(NoDefault)
    assert "no-default" not in LOSSES


def test_smooths_labels_marks_the_losses_that_replace_label_smoothing():
    """Trainers refuse target smoothing on top of these (it would regularise twice, paper §5.1)."""
    marked = {name for name, cls in LOSSES.items() if cls.smooths_labels}
    assert marked == {"ls", "maxsup", "ls-reg", "ls-err", "ls-err-alt", "adaptive-ls", "maxsup-adaptive"}


# --------------------------------------------------------------------------------------------------------------------
# Loss values against hand computations or an independent formula. A mutation audit found that single-point changes
# here (a mean for a sum, < for <=, a dropped minus) passed every test above.
# --------------------------------------------------------------------------------------------------------------------
def test_soft_target_ce_is_torchs_probability_target_cross_entropy():
    """CE on Mixup/CutMix targets (the CE baseline and the CE part of every other loss): the batch mean of
    −Σ_k t_k·log p_k. B ≠ K, so a reduction over the wrong axis cannot pass."""
    z, _ = _batch(b=7, k=5, seed=30)
    t = torch.softmax(torch.randn(7, 5, generator=torch.Generator().manual_seed(31)), -1)
    assert torch.allclose(build_criterion("ce", 5)(z, t), F.cross_entropy(z, t), atol=1e-6)


# z_g = 1 with two logits above (3, 2) and one below (0); z_g = 2 tied with class 1 (neither above nor below)
_DECOMP_Z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [2.0, 2.0, 0.0, 1.0]])
_DECOMP_Y = torch.tensor([1, 0])
_DECOMP = {"regularization": [1 / 4, 3 / 4], "error_amplification": [-3 / 4, 0.0],
           "regularization_only": [1.0, 3 / 2], "error_amplification_only": [-3 / 2, 0.0],
           "error_amplification_alt": [-2.0, 0.0]}


def test_ls_decomposition_hand_values_with_a_tie():
    """Corollary 3.4's terms and Table 1's variants: a tie with z_g is neither above nor below (M = 2, N = 0)."""
    d = ls_decomposition(_DECOMP_Z, _DECOMP_Y)
    for key, expected in _DECOMP.items():
        assert torch.allclose(d[key], torch.tensor(expected)), key


@pytest.mark.parametrize("name, key", [("ls-reg", "regularization_only"), ("ls-err", "error_amplification_only"),
                                       ("ls-err-alt", "error_amplification_alt")])
def test_table1_ablation_losses_are_ce_plus_alpha_times_their_term(name, key):
    crit = build_criterion(name, 4, epochs=3)
    crit.set_epoch(2)  # α = 0.2
    expected = F.cross_entropy(_DECOMP_Z, _DECOMP_Y) + 0.2 * sum(_DECOMP[key]) / 2
    assert torch.allclose(crit(_DECOMP_Z, _DECOMP_Y), expected, atol=1e-6)


def test_alpha_schedule_clamps_past_the_ends_and_starts_at_epoch_zero():
    s = AlphaSchedule(0.1, 0.2, epochs=11)
    assert s(10) == pytest.approx(0.2) and s(10.5) == pytest.approx(0.2) and s(25) == pytest.approx(0.2)
    assert s(-3) == pytest.approx(0.1)
    assert AlphaSchedule(0.1, 0.2, epochs=2)(1) == pytest.approx(0.2)  # D = E − 1 = 1
    assert AlphaSchedule(0.1, 0.2, epochs=2, denominator="E")(1) == pytest.approx(0.15)
    assert build_criterion("maxsup", 10, epochs=300).alpha == pytest.approx(0.1)  # before any set_epoch


def test_ols_loss_value_initial_matrix_and_per_class_means():
    ols = OnlineLabelSmoothingLoss(3, a=0.3, init_smoothing=0.2)
    s0 = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])  # ε/(K − 1) off the diagonal
    assert torch.allclose(ols.soft_labels, s0)
    # samples 0 and 1 are correct for class 0, sample 2 for class 1, sample 3 is wrong (predicts 2, label 1)
    z = torch.tensor([[4.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    log_p = F.log_softmax(z, -1)
    ols.train()
    expected = 0.3 * F.cross_entropy(z, y) + 0.7 * -(s0[y] * log_p).sum(-1).mean()
    assert torch.allclose(ols(z, y), expected, atol=1e-6)
    ols.on_epoch_end()
    p = log_p.exp()
    assert torch.allclose(ols.soft_labels, torch.stack([(p[0] + p[1]) / 2, p[2], torch.full((3,), 1 / 3)]))
    # a Mixup target trains against the soft-label row of its arg-max class
    ols.eval()
    mixed = 0.6 * F.one_hot(y, 3).float() + 0.4 * F.one_hot((y + 1) % 3, 3).float()
    expected = 0.3 * F.cross_entropy(z, mixed) + 0.7 * -(ols.soft_labels[y] * log_p).sum(-1).mean()
    assert torch.allclose(ols(z, mixed), expected, atol=1e-6)
    assert torch.allclose(OnlineLabelSmoothingLoss(2).soft_labels, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))


def test_zipf_loss_is_ce_plus_lambda_kl_from_the_prior_to_the_non_target_softmax():
    z = torch.tensor([[3.0, 2.0, 2.0, 0.0], [0.0, 1.0, 4.0, 2.0]])
    y = torch.tensor([0, 2])
    # ranks ('min' ties) 1, 2, 2, 4 and 4, 3, 1, 2; weights rank⁻¹ without the target, renormalised
    prior = [torch.tensor([1 / 2, 1 / 2, 1 / 4]), torch.tensor([1 / 4, 1 / 3, 1 / 2])]
    non_target = [torch.tensor([2.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 2.0])]
    kl = torch.stack([(p / p.sum() * (torch.log(p / p.sum()) - F.log_softmax(v, -1))).sum()
                      for p, v in zip(prior, non_target, strict=True)])
    zipf = ZipfLabelSmoothingLoss(lam=0.3)
    assert torch.allclose(zipf(z, y), F.cross_entropy(z, y) + 0.3 * kl.mean(), atol=1e-6)
    mixed = 0.7 * F.one_hot(y, 4).float() + 0.3 * F.one_hot((y + 1) % 4, 4).float()  # prior of the arg-max class
    assert torch.allclose(zipf(z, mixed), F.cross_entropy(z, mixed) + 0.3 * kl.mean(), atol=1e-6)


def test_logit_penalty_and_confidence_penalty_values():
    z = torch.tensor([[1.0, 2.0, -2.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([1, 2])
    # (β/2)·‖z‖² per sample: ‖z‖² = 9 and 10
    assert torch.allclose(build_criterion("lp", 3, beta=0.1)(z, y), F.cross_entropy(z, y) + 0.05 * 9.5, atol=1e-6)
    # CE − β·H(p), H from torch.distributions (an independent implementation)
    entropy = torch.distributions.Categorical(logits=z).entropy().mean()
    assert torch.allclose(build_criterion("cp", 3, beta=0.3)(z, y), F.cross_entropy(z, y) - 0.3 * entropy, atol=1e-6)
