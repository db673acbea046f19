"""Members trained as one batch (`train_members`) against each trained alone: no Ray."""

import numpy as np
import pytest
import torch

from s2r_ray.config import StudyConfig, SyntheticData
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.models import make_family
from s2r_ray.models.base import Diverged, FineTuned, Pretrained, Source, Target
from s2r_ray.protocol import make_plan

HP = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 12, "batch_size": 32, "freeze": 0, "dropout": 0.0}
# own lr, weight decay, dropout, frozen layers and length: the batch must keep them apart
HPS = [
    HP,
    {**HP, "lr": 1e-2, "weight_decay": 1e-6, "dropout": 0.2},
    {**HP, "freeze": 1, "epochs": 5},
    {**HP, "lr": 5e-4, "dropout": 0.1, "freeze": 2, "epochs": 9},
]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    cfg = StudyConfig(name="t", sizes=[300], repetitions=1, model={"hidden": [32, 16, 8]})
    ds = make_synthetic(SyntheticData(n_source=600, n_target=300))
    rep = make_plan(cfg, ds).repetitions[0]
    family = make_family(cfg)
    rows = rep.source_subset(300)
    args = (
        ds.source_X[rows],
        ds.source_y[rows],
        ds.source_X[rep.holdout],
        ds.source_y[rep.holdout],
    )
    pre = family.pretrain(*args, seed=0)
    split = (
        ds.target_X[rep.train],
        ds.target_y[rep.train],
        ds.target_X[rep.val],
        ds.target_y[rep.val],
    )
    return family, split, pre.state, ds.target_X[rep.test]


def test_members_trained_as_one_equal_each_trained_alone(setup):
    """Same seeds, same networks: only the float order of the stacked products differs."""
    family, split, state, X_test = setup
    seeds, stops = [5, 6, 7, 8], [None, 7, None, None]
    together = family.finetune_members(
        [Target(*split, pretrained=state)] * 4, hps=HPS, seeds=seeds, stop_epochs=stops
    )
    for hp, seed, stop, got in zip(HPS, seeds, stops, together, strict=True):
        alone = family.finetune(*split, hp=hp, seed=seed, pretrained=state, stop_epoch=stop)
        assert isinstance(got, FineTuned)
        assert len(got.curve) == len(alone.curve) == min(hp["epochs"], stop or 99)
        np.testing.assert_allclose(got.curve, alone.curve, rtol=1e-4)
        np.testing.assert_allclose(
            got.predictor.predict(X_test), alone.predictor.predict(X_test), rtol=1e-4, atol=1e-4
        )


def test_frozen_layers_of_a_batched_member_do_not_move(setup):
    family, split, state, _ = setup
    target = Target(*split, pretrained=state)
    _, frozen = family.finetune_members([target] * 2, hps=[HP, HPS[2]], seeds=[1, 2])
    after = frozen.predictor.state()["weights"]
    np.testing.assert_array_equal(after["body.0.0.weight"], state["weights"]["body.0.0.weight"])
    assert not np.array_equal(after["body.1.0.weight"], state["weights"]["body.1.0.weight"])


def test_a_member_that_diverges_leaves_the_others_training(setup):
    family, split, state, _ = setup
    wild = {**HP, "lr": 1e30}
    target = Target(*split, pretrained=state)
    ok, bad = family.finetune_members([target] * 2, hps=[HP, wild], seeds=[3, 4])
    alone = family.finetune(*split, hp=HP, seed=3, pretrained=state)
    assert isinstance(bad, Diverged)
    np.testing.assert_allclose(ok.curve, alone.curve, rtol=1e-4)


def test_members_of_one_setting_share_an_optimiser_and_leave_it_one_by_one(setup):
    """A scoring ensemble: one hp, several seeds, one AdamW for all; a member that stops early
    takes its parameters out of it and the others go on as if alone."""
    family, split, state, X_test = setup
    hp = {**HP, "dropout": 0.1, "freeze": 1}
    seeds, stops = [21, 22, 23], [None, 4, 8]
    together = family.finetune_members(
        [Target(*split, pretrained=state)] * 3, hps=[hp] * 3, seeds=seeds, stop_epochs=stops
    )
    for seed, stop, got in zip(seeds, stops, together, strict=True):
        alone = family.finetune(*split, hp=hp, seed=seed, pretrained=state, stop_epoch=stop)
        assert len(got.curve) == (stop or hp["epochs"])
        np.testing.assert_allclose(got.curve, alone.curve, rtol=1e-4)
        np.testing.assert_allclose(
            got.predictor.predict(X_test), alone.predictor.predict(X_test), rtol=1e-4, atol=1e-4
        )


def test_pretrainings_trained_as_one_equal_each_trained_alone():
    """Pretrainings of one n, each with its own rows, hold-out and seed (`pretrain_members`),
    against each alone: the same curves up to the float order of the stacked products. The cap
    ends them before any plateau decision, which a float difference could flip."""
    torch.set_num_threads(1)
    cfg = StudyConfig(
        name="t",
        sizes=[300],
        repetitions=3,
        model={"hidden": [32, 16]},
        pretrain={"patience": 50, "max_steps": 600},
    )
    ds = make_synthetic(SyntheticData(n_source=900, n_target=300))
    plan, family = make_plan(cfg, ds), make_family(cfg)
    sources = []
    for r in range(3):
        rep = plan.repetitions[r]
        rows = rep.source_subset(300)
        split = (ds.source_X[rows], ds.source_y[rows], ds.source_X[rep.holdout])
        sources.append(Source(*split, ds.source_y[rep.holdout], rep.seed, ds.target_X[rep.train]))
    together = family.pretrain_members(sources)
    for s, got in zip(sources, together, strict=True):
        alone = family.pretrain(s.X, s.y, s.X_val, s.y_val, seed=s.seed, X_extra=s.X_extra)
        assert isinstance(got, Pretrained) and got.steps == alone.steps == 600
        assert [step for step, _ in got.curve] == [step for step, _ in alone.curve]
        np.testing.assert_allclose(
            [v for _, v in got.curve], [v for _, v in alone.curve], rtol=1e-4
        )
    assert len({got.source_val_mae for got in together}) == 3  # three networks, not one


def test_one_step_of_all_members_is_torch_adamw_step_bit_for_bit():
    """`step_all` calls AdamW's kernel once for every member of one rate and decay instead of
    `AdamW.step` per optimiser: after steps under two rates, a cosine schedule, a parameter
    left without a gradient (a frozen layer) and a member that left, every weight and moment
    equals torch's own optimiser's to the last bit."""
    from s2r_ray.models.torch_family import _Optimizer, step_all

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)) for _ in range(3)]
    twins = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)) for _ in range(3)]
    for net, twin in zip(nets, twins, strict=True):
        twin.load_state_dict(net.state_dict())

    class Run:  # what `_Optimizer` reads of a member
        def __init__(self, net, lr):
            self.params, self.pretraining, self.n, self.bs = list(net.parameters()), False, 64, 16
            self.plan = type("Plan", (), {"lr": lr, "weight_decay": 1e-2, "epochs": 3})

    runs = [Run(net, lr) for net, lr in zip(nets, (1e-2, 1e-2, 3e-3), strict=True)]
    mine = [_Optimizer(runs[:2], "cpu"), _Optimizer(runs[2:], "cpu")]
    theirs = [
        torch.optim.AdamW(list(twins[0].parameters()) + list(twins[1].parameters()), lr=1e-2,
                          weight_decay=1e-2, fused=True),
        torch.optim.AdamW(twins[2].parameters(), lr=3e-3, weight_decay=1e-2, fused=True),
    ]  # fmt: skip
    cosines = [torch.optim.lr_scheduler.CosineAnnealingLR(o, 12) for o in theirs]
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for step in range(8):
        if step == 5:  # the second member leaves
            mine[0].leave(runs[1])
            theirs[0].param_groups[0]["params"] = list(twins[0].parameters())
        live = [0, 2] if step >= 5 else [0, 1, 2]
        for group in (nets, twins):
            for i in live:
                for p in group[i].parameters():
                    p.grad = None
                torch.nn.functional.l1_loss(group[i](x), y).backward()
                group[i][0].bias.grad = None if step < 3 else group[i][0].bias.grad
        step_all(mine, pretraining=False)
        for o, cosine in zip(theirs, cosines, strict=True):
            o.step()
            cosine.step()
    for net, twin in zip(nets, twins, strict=True):
        for p, q in zip(net.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)
    twin_of = {
        p: q
        for net, twin in zip(nets, twins, strict=True)
        for p, q in zip(net.parameters(), twin.parameters(), strict=True)
    }
    for o, t in zip(mine, theirs, strict=True):
        assert len(o.opt.param_groups[0]["params"]) == len(t.param_groups[0]["params"]) == 4
        for p in o.opt.param_groups[0]["params"]:
            a, b = o.opt.state[p], t.state[twin_of[p]]
            assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
