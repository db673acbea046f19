"""The composition-attention family's parts: the `elements` featurizer (real pymatgen parsing) and
`CompositionAttention` trained by a plain loop on synthetic compositions of real elements."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Element

from s2r_ray.config import ConfigError, DataConfig
from s2r_ray.data import load_dataset
from s2r_ray.data.featurizers import make_featurizer
from s2r_ray.data.featurizers.composition import element_table
from s2r_ray.models.attention import AttentionFamily, AttentionOptions, CompositionAttention
from s2r_ray.models.base import Pretrained, Source, Target
from s2r_ray.models.hyperparameters import PretrainConfig
from s2r_ray.models.torch_family import SMALL_NETWORK

# stable, well-characterised elements: H to Bi without noble gases and lanthanides
SYMBOLS = [e.symbol for e in Element if e.Z <= 83 and not (e.is_noble_gas or e.is_lanthanoid)]
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 2, "ff_width": 64, "head_hidden": 32}
Predictor = Callable[[np.ndarray], np.ndarray]


def random_formulas(n: int, seed: int) -> list[str]:
    """n formulas of 2-4 distinct elements with integer amounts 1-6."""
    rng = np.random.default_rng(seed)
    formulas = []
    for _ in range(n):
        symbols = rng.choice(SYMBOLS, size=rng.integers(2, 5), replace=False)
        formulas.append("".join(f"{s}{rng.integers(1, 7)}" for s in symbols))
    return formulas


def featurize(formulas: list[str], **options) -> tuple[list[str], np.ndarray]:
    featurizer = make_featurizer("elements", options)
    keys = featurizer.canonical([(f,) for f in formulas])
    assert all(isinstance(k, str) for k in keys)
    return keys, featurizer.featurize(keys)


def properties(X: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-slot values of an element property, fractions) of featurizer rows."""
    _, _, names, table = element_table()
    k = X.shape[1] // 2
    z = X[:, :k].astype(int)
    values = table[:, names.index(name)][np.maximum(z - 1, 0)]  # row Z-1 is element Z
    return values, X[:, k:]


def real_property(X: np.ndarray) -> np.ndarray:
    """A smooth, non-additive function of the elements: mean electronegativity plus its spread."""
    en, frac = properties(X, "electronegativity")
    present = frac > 0
    spread = np.where(present, en, -np.inf).max(1) - np.where(present, en, np.inf).min(1)
    return (frac * en).sum(1) + spread


def simulated_property(X: np.ndarray) -> np.ndarray:
    """The real property plus a smooth systematic bias (in the mean atomic radius)."""
    radius, frac = properties(X, "atomic_radius")
    return real_property(X) + 0.8 * (frac * radius).sum(1) - 1.0


def fit(
    model: CompositionAttention,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    batch: int,
    seed: int = 0,
) -> Predictor:
    """Plain L1 training on standardised y (as `s2r_ray.model`), returning the predictor."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    center, scale = float(y.mean()), float(y.std())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(((y - center) / scale).astype(np.float32))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(batch):
            loss = torch.nn.functional.l1_loss(model(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def predict(X_new: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model(torch.from_numpy(X_new)).numpy() * scale + center

    return predict


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.abs(y - pred).mean())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches this small gain nothing from a second thread, and on a loaded shared machine its
    synchronisation costs minutes (measured: 10 min for this module with 2 threads, 10 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    _, X = featurize(random_formulas(1400, seed=1))
    return X, simulated_property(X)


@pytest.fixture(scope="module")
def pretrained(source) -> tuple[CompositionAttention, float, float]:
    """A model pretrained on 1,000 simulated rows; its hold-out MAE and the mean predictor's."""
    X, y = source
    torch.manual_seed(0)
    model = CompositionAttention(**SMALL)
    predict = fit(model, X[:1000], y[:1000], epochs=25, lr=3e-3, batch=64)
    return model, mae(y[1000:], predict(X[1000:])), mae(y[1000:], y[:1000].mean())


def test_rows_are_atomic_numbers_then_fractions_largest_first_ties_by_z():
    _, X = featurize(["Fe2O3", "LiFePO4"], max_elements=5)
    assert X[0].tolist() == pytest.approx([8, 26, 0, 0, 0, 0.6, 0.4, 0, 0, 0])
    assert X[1, :5].tolist() == [8, 3, 15, 26, 0]  # O 4/7, then Li, P, Fe at 1/7 by Z
    assert X[1, 5:].sum() == pytest.approx(1.0)


def test_keys_are_the_composition_featurizers():
    formulas = ["Hg0.7Cd0.3Te", "Fe4O6", "Ca(OH)2", "NaN", *random_formulas(20, seed=2)]
    ids = [(f,) for f in formulas]
    composition = make_featurizer("composition")
    assert make_featurizer("elements").canonical(ids) == composition.canonical(ids)


def test_unusable_compositions_are_rejected_rows_and_padding_columns_are_kept(tmp_path: Path):
    source = tmp_path / "source.csv"
    source.write_text(
        "formula,gap\nFe2O3,2.0\nXx2,1.0\nRfO2,1.5\nLiFePO4,3.0\nNaCl,5.0\nGaAs,1.2\nSiO2,8.0\n"
    )
    target = tmp_path / "target.csv"
    target.write_text("formula,gap\nFe2O3,2.2\nNaCl,8.5\nOgF4,1.0\n")
    spec = {
        "id_columns": ["formula"],
        "value_column": "gap",
        "featurizer": "elements",
        "featurizer_options": {"max_elements": 3},
    }
    cfg = DataConfig.model_validate(
        {
            "kind": "tables",
            "source": spec | {"path": str(source)},
            "target": spec | {"path": str(target)},
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    ds = load_dataset(cfg, rejected_csv=tmp_path / "out" / "rejected_rows.csv", workers=1)
    rejected = pd.read_csv(tmp_path / "out" / "rejected_rows.csv")
    assert rejected[["side", "value", "reason"]].values.tolist() == [
        ["source", "Xx2", "invalid_formula"],
        ["source", "RfO2", "element_without_properties"],
        ["source", "LiFePO4", "too_many_elements"],
        ["target", "OgF4", "element_without_properties"],
    ]
    assert list(ds.source_ids) == ["Fe2O3", "ClNa", "AsGa", "O2Si"]
    # no row has a third element, yet Z_2 and fraction_2 stay: the model reads by position
    assert ds.feature_names == ["Z_0", "Z_1", "Z_2", "fraction_0", "fraction_1", "fraction_2"]
    assert ds.counts["dropped_constant_features"] == 0
    again = load_dataset(cfg, workers=1)
    assert again.counts["source_keys_featurized"] == 0
    assert again.counts["source_keys_cached"] == 4
    np.testing.assert_array_equal(again.source_X, ds.source_X)


def test_condition_columns_are_refused():
    table = pd.DataFrame({"T": [300.0]})
    with pytest.raises(ConfigError, match="condition_columns"):
        make_featurizer("elements").row_features(table, ["T"])


def test_pretraining_lowers_source_loss(pretrained):
    _, holdout_mae, mean_mae = pretrained
    assert holdout_mae < 0.3 * mean_mae


def test_element_order_does_not_change_the_prediction(pretrained):
    model, _, _ = pretrained
    _, X = featurize([*random_formulas(200, seed=3), "LiFePO4", "NaCl"])
    k = X.shape[1] // 2
    order = np.argsort(np.random.default_rng(4).random((len(X), k)), axis=1)  # padding moves too
    shuffled = np.hstack(
        [np.take_along_axis(X[:, :k], order, 1), np.take_along_axis(X[:, k:], order, 1)]
    )
    model.eval()
    with torch.no_grad():
        pred, pred_shuffled = model(torch.from_numpy(X)), model(torch.from_numpy(shuffled))
    assert pred.std() > 0.1
    torch.testing.assert_close(pred_shuffled, pred, atol=1e-5, rtol=1e-5)


def test_padding_width_and_batch_mates_do_not_change_the_prediction(pretrained):
    model, _, _ = pretrained
    formulas = ["Fe2O3", "LiFePO4", "NaCl", "Ba2YCu3O7"]
    _, narrow = featurize(formulas, max_elements=4)
    _, wide = featurize(formulas, max_elements=8)
    model.eval()
    with torch.no_grad():
        batch = model(torch.from_numpy(wide))
        alone = torch.cat([model(torch.from_numpy(row[None])) for row in wide])
        torch.testing.assert_close(model(torch.from_numpy(narrow)), batch, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, batch, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batch).all()


def test_freeze_fixes_the_embedding_then_encoder_layers_bottom_up():
    model = CompositionAttention(**SMALL)

    def trainable() -> list[bool]:
        parts = [model.element, model.fraction, *model.encoder.layers, model.head]
        return [all(p.requires_grad for p in part.parameters()) for part in parts]

    model.freeze(2)
    assert trainable() == [False, False, False, True, True]
    model.freeze(1)
    assert trainable() == [False, False, True, True, True]
    model.freeze(0)
    assert all(trainable())


def test_finetuning_from_simulation_beats_training_from_scratch(pretrained):
    """Few real rows: a network that learnt the shared part from simulation needs only the bias
    corrected, one trained from scratch must learn everything from 24 rows."""
    _, X = featurize(random_formulas(424, seed=5))
    y = real_property(X)
    train, test = slice(0, 24), slice(24, None)
    recipe = {"epochs": 60, "lr": 1e-3, "batch": 8}

    transferred = CompositionAttention(**SMALL)
    transferred.load_state_dict(pretrained[0].state_dict())  # weights shipped as the seam would
    transferred.head.reset_parameters()
    torch.manual_seed(0)
    scratch = CompositionAttention(**SMALL)

    fine_mae = mae(y[test], fit(transferred, X[train], y[train], **recipe)(X[test]))
    scratch_mae = mae(y[test], fit(scratch, X[train], y[train], **recipe)(X[test]))
    assert fine_mae < 0.5 * scratch_mae


def _family(**pretrain) -> AttentionFamily:
    return AttentionFamily(AttentionOptions(**SMALL), PretrainConfig(batch_size=64, **pretrain))


def test_attention_networks_trained_as_one_batch_equal_each_trained_alone(source):
    """`forward_stacked` against the module's own forward: pretrainings of one n (own rows,
    seeds) and fine-tunings with their own rate, frozen stages and length, as one batch and
    alone: the same curves up to the float order of the stacked products (the step cap ends the
    pretrainings before a plateau decision, which a float difference could flip)."""
    X, y = source
    family = _family(patience=50, max_steps=60, min_steps_per_eval=20)
    sources = [
        Source(
            X[i * 300 : (i + 1) * 300], y[i * 300 : (i + 1) * 300], X[900:1000], y[900:1000], seed=i
        )
        for i in range(3)
    ]
    together = family.pretrain_members(sources)
    for s, got in zip(sources, together, strict=True):
        alone = family.pretrain(s.X, s.y, s.X_val, s.y_val, seed=s.seed)
        assert isinstance(got, Pretrained) and got.steps == alone.steps == 60
        np.testing.assert_allclose(
            [v for _, v in got.curve], [v for _, v in alone.curve], rtol=1e-4
        )
    state = together[0].state
    hp = {
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "epochs": 5,
        "batch_size": 32,
        "freeze": 0,
        "dropout": 0.0,
    }
    hps = [hp, {**hp, "lr": 1e-3, "freeze": 1}, {**hp, "freeze": 2, "epochs": 3}]
    split = (X[1000:1200], real_property(X[1000:1200]), X[1200:1300], real_property(X[1200:1300]))
    target = Target(*split, pretrained=state)
    together = family.finetune_members([target] * 3, hps=hps, seeds=[1, 2, 3])
    for hp_, seed, got in zip(hps, [1, 2, 3], together, strict=True):
        alone = family.finetune(*split, hp=hp_, seed=seed, pretrained=state)
        assert len(got.curve) == len(alone.curve) == hp_["epochs"]
        np.testing.assert_allclose(got.curve, alone.curve, rtol=1e-4)


def test_a_batched_attention_members_dropout_is_its_own():
    """With dropout, a member's masks come from its own generator and are drawn over its own
    compositions: the member ends with the same curve beside any batch mates (wider
    compositions among them included); another seed differs."""
    _, X = featurize([*random_formulas(198, seed=6), *["LiNaKMgCaSrFe2O9"] * 2])
    X = X[np.random.default_rng(0).permutation(len(X))]  # batches with and without 8 elements
    y = simulated_property(X)
    family = _family()
    hp = {
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "epochs": 3,
        "batch_size": 32,
        "freeze": 0,
        "dropout": 0.1,
    }
    split = (X[:150], y[:150], X[150:], y[150:])
    mates = [{**hp, "lr": 1e-3}, {**hp, "dropout": 0.0}]
    target = Target(*split)
    a = family.finetune_members([target] * 2, hps=[hp, mates[0]], seeds=[7, 8])
    b = family.finetune_members([target] * 3, hps=[hp, mates[1], mates[0]], seeds=[7, 9, 10])
    np.testing.assert_allclose(a[0].curve, b[0].curve, rtol=1e-4)
    c = family.finetune_members([target] * 2, hps=[hp, mates[0]], seeds=[11, 8])
    assert not np.allclose(a[0].curve, c[0].curve, rtol=1e-3)


def test_attention_pretrainings_are_not_packed_on_a_cpu_even_small():
    """The parameter rule would pack this small network's pretrainings; measured slower."""
    family = _family()
    assert sum(p.numel() for p in family.build(16, 0.0).parameters()) < SMALL_NETWORK
    assert not family.stacks_pretraining(16, "cpu")
