"""The MLP family through the model seam, on the synthetic pair: no Ray, no MLflow."""

import numpy as np
import pytest
import torch

from s2r_ray.config import StudyConfig, SyntheticData
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.models import make_family
from s2r_ray.models.base import mae
from s2r_ray.models.hyperparameters import PretrainConfig
from s2r_ray.models.mlp import MLP, MLPFamily, MLPOptions, Scaler
from s2r_ray.models.network import Network
from s2r_ray.protocol import make_plan

HP = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 40, "batch_size": 32, "freeze": 0, "dropout": 0.0}


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    cfg = StudyConfig(name="t", sizes=[2000], repetitions=1)
    ds = make_synthetic(SyntheticData(n_source=3000, n_target=300))
    return cfg, ds, make_plan(cfg, ds).repetitions[0]


def _pretrain(cfg, ds, rep, n, family=None):
    rows = rep.source_subset(n)
    return (family or make_family(cfg)).pretrain(
        ds.source_X[rows],
        ds.source_y[rows],
        ds.source_X[rep.holdout],
        ds.source_y[rep.holdout],
        seed=0,
    )


def _finetune(ds, rep, cfg, state, seed=0, hp=HP, **kwargs):
    return make_family(cfg).finetune(
        ds.target_X[rep.train],
        ds.target_y[rep.train],
        ds.target_X[rep.val],
        ds.target_y[rep.val],
        hp=hp,
        seed=seed,
        pretrained=state,
        **kwargs,
    )


def test_pretraining_lowers_the_source_error_and_converges(setup):
    cfg, ds, rep = setup
    p = _pretrain(cfg, ds, rep, 2000)
    y_hold = ds.source_y[rep.holdout]
    predict_mean = mae(y_hold, np.full_like(y_hold, ds.source_y[rep.source_subset(2000)].mean()))
    assert p.curve[0][1] > p.source_val_mae
    assert p.source_val_mae < 0.4 * predict_mean
    assert p.converged and p.steps < cfg.pretrain.max_steps


def test_pretraining_on_the_step_cap_is_flagged(setup):
    cfg, ds, rep = setup
    capped = MLPFamily(MLPOptions(), PretrainConfig(max_steps=60, min_steps_per_eval=20))
    p = _pretrain(cfg, ds, rep, 500, capped)
    assert not p.converged and p.steps == 60


def test_transfer_beats_no_pretraining_on_a_pair_built_for_it(setup):
    cfg, ds, rep = setup
    test = rep.test
    base = _finetune(ds, rep, cfg, None)
    tuned = _finetune(ds, rep, cfg, _pretrain(cfg, ds, rep, 2000).state)
    base_mae = mae(ds.target_y[test], base.predictor.predict(ds.target_X[test]))
    transfer_mae = mae(ds.target_y[test], tuned.predictor.predict(ds.target_X[test]))
    assert transfer_mae < 0.8 * base_mae


def test_finetuning_is_deterministic_for_a_seed(setup):
    """The scorer rebuilds the selected trial's model from its seed: this must hold exactly."""
    cfg, ds, rep = setup
    state = _pretrain(cfg, ds, rep, 300).state
    a, b, c = (_finetune(ds, rep, cfg, state, seed=s) for s in (7, 7, 8))
    assert a.curve == b.curve
    np.testing.assert_array_equal(
        a.predictor.predict(ds.target_X), b.predictor.predict(ds.target_X)
    )
    assert a.curve != c.curve


def test_frozen_blocks_do_not_move(setup):
    cfg, ds, rep = setup
    state = _pretrain(cfg, ds, rep, 300).state
    ft = _finetune(ds, rep, cfg, state, hp={**HP, "freeze": 1, "epochs": 3})
    after = ft.predictor.state()["weights"]
    np.testing.assert_array_equal(after["body.0.0.weight"], state["weights"]["body.0.0.weight"])
    assert not np.array_equal(after["body.1.0.weight"], state["weights"]["body.1.0.weight"])


def test_scaler_survives_a_feature_absent_from_the_fitting_rows():
    """The Xe lesson: a feature constant in the source must not explode on a target row."""
    X = np.zeros((50, 2))
    X[:, 0] = np.arange(50)
    s = Scaler.fit(X, clip=10.0)
    Z = s.transform(np.array([[25.0, 1.0], [25.0, 1e6]]))
    assert np.all(np.abs(Z) <= 10.0)
    assert Z[1, 1] == 10.0


def test_network_state_round_trips():
    family = MLPFamily(MLPOptions(hidden=[8, 4]), PretrainConfig())
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)), rng.normal(size=64)
    ft = family.finetune(X, y, X, y, hp={**HP, "epochs": 2}, seed=0)
    rebuilt = family.load(ft.predictor.state())
    np.testing.assert_allclose(rebuilt.predict(X), ft.predictor.predict(X), rtol=1e-6)


def test_a_trial_stopped_early_is_replayed_exactly(setup):
    """ASHA stops a trial mid-schedule; the scorer replays it with stop_epoch, same cosine."""
    cfg, ds, rep = setup

    class Stop(Exception):
        pass

    def stop_at_4(epoch, val, best):
        if epoch == 4:
            raise Stop

    seen = []
    hp = {**HP, "epochs": 10}
    with pytest.raises(Stop):
        _finetune(
            ds,
            rep,
            cfg,
            None,
            seed=3,
            hp=hp,
            on_epoch=lambda e, v, b: (seen.append(v), stop_at_4(e, v, b)),
        )
    replay = _finetune(ds, rep, cfg, None, seed=3, hp=hp, stop_epoch=4)
    assert replay.curve == seen
    assert replay.best_val_mae == min(seen)


def _rebuilt_network() -> tuple[Network, np.ndarray]:
    """A network as zero-shot scoring gets it: rebuilt from its state, so on the CPU."""
    family = MLPFamily(MLPOptions(hidden=[8, 4]), PretrainConfig())
    X = np.random.default_rng(0).normal(size=(16, 3))
    net = Network(MLP(3, [8, 4]), Scaler.fit(X), 3, 0.0, 1.0)
    return family.load(net.state()), X


def test_predict_moves_the_network_to_the_requested_device():
    """Scoring predicts on the device Ray granted with a network rebuilt on the CPU: the module
    must follow the inputs. On a CPU-only machine the meta device stands in for a GPU (its
    results hold no data, so they cannot come back to numpy; the placement is the check)."""
    net, X = _rebuilt_network()
    with pytest.raises(NotImplementedError, match="meta tensor"):
        net.predict(X, torch.device("meta"))
    assert {p.device for p in net.module.parameters()} == {torch.device("meta")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_matches_the_cpu():
    net, X = _rebuilt_network()
    on_cpu = net.predict(X, "cpu")
    np.testing.assert_allclose(net.predict(X, "cuda"), on_cpu, rtol=1e-4, atol=1e-5)
    assert next(net.module.parameters()).is_cuda
