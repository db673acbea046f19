"""What every torch family shares: a family says only how to build its network and encode its
inputs (and, if it can, how K of them run as one: `stacked`); one training loop
(`train_members`, of which `train` is the one-network case) pretrains and fine-tunes them.

Same seed and thread count, same numbers: the scorer rebuilds exactly the model a trial selected.
"""

from __future__ import annotations

import functools
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from torch import nn
from torch.optim.adamw import adamw

from s2r_ray.data.dataset import Rows
from s2r_ray.models.base import (
    Diverged,
    Family,
    FineTuned,
    OnBest,
    OnEpoch,
    OnRound,
    Pretrained,
    Source,
    Target,
    mae,
)
from s2r_ray.models.hyperparameters import FinetuneSpace
from s2r_ray.models.network import Encoder, Network

# A stack of K small networks shares each step's fixed per-call cost, which only dominates small
# networks on a CPU: three pretrainings of one n as one batch against one after another, ratio of
# wall times (benchmarks/pack.md), the demo's MLP (8-128-64-32, 11k parameters) 1.20-1.52x, the
# band-gap MLP (175-512-256-128, 254k) 0.92-1.18x. GPUs are unmeasured (benchmarks/gpu.py).
SMALL_NETWORK = 50_000

# Training rows whose encoding is larger than this are encoded batch by batch as drawn, not once
# whole: 10^7 source rows would otherwise cost a float64 and a float32 copy of the pool.
ENCODE_WHOLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Plan:
    """A run's settings. Pretraining (`epochs` 0): rounds of at least one pass over the rows and
    at least `min_steps_per_eval` batches drawn with replacement, so the step budget grows with n;
    stops after `patience` evaluations without improvement or at `max_steps`. Fine-tuning:
    shuffled epochs under a cosine over `epochs`; stops after `last` (a replayed trial's stop)."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int = 0
    last: int = 0
    patience: int = 0
    min_steps_per_eval: int = 0
    max_steps: int = 0


@dataclass
class Trained:
    net: Network  # with its best evaluation's weights
    best_val_mae: float
    steps: int
    stale: int  # evaluations after the best one
    curve: list[tuple[int, float]]  # (step when pretraining, epoch when fine-tuning; val MAE)


@dataclass(frozen=True)
class Member:
    """One network of a batch: how to build it (its initialisation is drawn under `seed`), its
    rows, settings and callbacks. `on_eval` returning True (itself) makes it leave the batch."""

    start: Callable[[], Network]
    X: np.ndarray | Rows
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    plan: Plan
    seed: int
    on_eval: Callable[[int, float, float], bool | None] | None = None
    on_best: OnBest | None = None


# K modules of one shape, (K, batch, inputs) -> (K, batch), dropout drawn from each member's
# own generator (the MLP's as its module would draw it from the global one when trained alone;
# the attention's are its own but not those, see `attention.forward_stacked`)
StackedForward = Callable[
    [Sequence[nn.Module], torch.Tensor, Sequence[torch.Generator]], torch.Tensor
]


def stacked_affine(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """K affine maps on (K, rows, in): one batched product of the members' own weights
    (stacked each step, so each member's gradient reaches its own parameters)."""
    return torch.baddbmm(torch.stack(biases).unsqueeze(1), x, torch.stack(weights).transpose(1, 2))


def stacked_linear(layers: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """K Linear layers of one shape on (K, rows, in)."""
    return stacked_affine([layer.weight for layer in layers], [layer.bias for layer in layers], x)


def stacked_dropout(
    rates: Sequence[float],
    x: torch.Tensor,
    noise: Sequence[torch.Generator],
    extents: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Each member's own rate and mask on (K, ...), drawn from its own generator as
    `nn.Dropout` on the CPU draws it alone (bernoulli then scaled), so a member's masks do not
    depend on its batch. `extents`: the shape of each member's own part of x (the rest is
    padding its batch mates need), where its mask is drawn."""
    if not any(rates):
        return x
    full = x.shape[1:]
    masks = []
    for i, (p, g) in enumerate(zip(rates, noise, strict=True)):
        if not p:
            masks.append(x.new_ones(full))
            continue
        own = tuple(extents[i]) if extents is not None else tuple(full)
        mask = torch.empty(own, device=x.device).bernoulli_(1 - p, generator=g).div_(1 - p)
        pads = [q for a, b in zip(reversed(own), reversed(full), strict=True) for q in (0, b - a)]
        masks.append(nn.functional.pad(mask, pads, value=1.0) if own != tuple(full) else mask)
    return x * torch.stack(masks)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _fused(device: str) -> bool:
    """AdamW's fused kernel: one pass per tensor instead of a dozen ops (1.1-1.5x a step)."""
    return torch.device(device).type in ("cpu", "cuda")


class _Optimizer:
    """AdamW (fused) and its schedule for the members of a batch that share their settings: one
    call steps them all (`step_all`), and element by element it is each member's own AdamW (the
    kernel works tensor by tensor, and members that start together have taken the same steps)."""

    def __init__(self, runs: list[_Run], device: str):
        first = runs[0]
        plan, params = first.plan, [p for r in runs for p in r.params]
        self.opt = torch.optim.AdamW(
            params, lr=plan.lr, weight_decay=plan.weight_decay, fused=_fused(device) or None
        )
        # its steps are taken by `step_all`, not `opt.step`: the flag the schedules read to
        # warn of a schedule step before any optimiser step
        self.opt._opt_called = True  # type: ignore[attr-defined]
        if first.pretraining:
            # Halve the rate after every patience/2 stale evaluations: training stops on a
            # plateau the decayed rate could not leave, not on the first noisy one.
            self.sched: torch.optim.lr_scheduler.LRScheduler = (
                torch.optim.lr_scheduler.ReduceLROnPlateau(
                    self.opt, factor=0.5, patience=max(0, plan.patience // 2 - 1), threshold=1e-6
                )
            )
        else:
            steps = plan.epochs * math.ceil(first.n / first.bs)
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, steps)
        for r in runs:
            r.optimizer = self

    @staticmethod
    def key(run: _Run) -> tuple:
        """Members alike in this are stepped by one optimiser."""
        plan = run.plan
        return (plan.lr, plan.weight_decay, plan.epochs) if not run.pretraining else (id(run),)

    def leave(self, run: _Run) -> None:
        """A member leaves: its parameters and their moments go (not masked: dropped)."""
        gone = {id(p) for p in run.params}
        group = self.opt.param_groups[0]
        group["params"] = [p for p in group["params"] if id(p) not in gone]
        for p in run.params:
            self.opt.state.pop(p, None)


def step_all(optimizers: Sequence[_Optimizer], pretraining: bool) -> None:
    """One AdamW step of every member: the functional kernel called once per learning rate and
    weight decay, not `Optimizer.step` once per optimiser, whose hooks, profiling and grouping
    took a fifth of a demo network's step (a quarter of three pretrainings' as one). The same
    kernel on the same tensors: the same numbers. State starts as `AdamW` starts it, on a
    parameter's first gradient."""
    calls: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
    for o in optimizers:
        group = o.opt.param_groups[0]
        fused = bool(group["fused"])
        key = (group["lr"], group["weight_decay"], group["betas"], group["eps"], fused)
        lists = calls.setdefault(key, ([], [], [], [], []))
        for p in group["params"]:
            if p.grad is None:
                continue
            state = o.opt.state[p]
            if not state:
                where = p.device if fused else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=where)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            own = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
            for into, t in zip(lists, own, strict=True):
                into.append(t)
    for (lr, decay, (beta1, beta2), eps, fused), (p, g, m, v, t) in calls.items():
        settings = {"lr": lr, "weight_decay": decay, "beta1": beta1, "beta2": beta2, "eps": eps}
        adamw(p, g, m, v, [], t, fused=fused or None, amsgrad=False, maximize=False, **settings)
    if not pretraining:
        for o in optimizers:
            o.sched.step()


class _Run:
    """One member's state in the loop: its network, encoded rows, optimiser and stop rule."""

    def __init__(self, m: Member, device: str):
        torch.manual_seed(m.seed)
        self.m, self.plan, self.gen = m, m.plan, torch.Generator().manual_seed(m.seed)
        net = self.net = m.start()
        # dropout masks of a batched member, drawn as the global generator would draw them
        self.noise = torch.Generator()
        self.noise.set_state(torch.get_rng_state())
        y64 = np.asarray(m.y, dtype=np.float64)
        net.y_center, net.y_scale = float(y64.mean()), float(max(y64.std(), 1e-8))
        net.module.to(device)
        self.rows, self.device = m.X if isinstance(m.X, Rows) else Rows.of(m.X), device
        whole = len(self.rows) * self.rows.n_columns * 4 <= ENCODE_WHOLE_BYTES
        encoded = net.encoder.transform(self.rows.materialize()) if whole else None
        self.Xt = None if encoded is None else torch.from_numpy(encoded).to(device)
        self.yt = torch.from_numpy(((y64 - net.y_center) / net.y_scale).astype(np.float32))
        self.yt = self.yt.to(device)
        self.Xv = torch.from_numpy(net.encoder.transform(m.X_val)).to(device)  # encoded once
        plan, self.params = m.plan, [p for p in net.module.parameters() if p.requires_grad]
        n = self.n = len(self.rows)
        self.bs, self.pretraining = min(plan.batch_size, n), not plan.epochs
        self.draws = max(math.ceil(n / self.bs), plan.min_steps_per_eval)  # pretraining
        self.optimizer: _Optimizer  # set by train_members: shared by members of equal settings
        self.min_gain = 1e-6 if self.pretraining else 0.0  # relative drop that counts as better
        self.best, self.best_state, self.stale, self.rounds, self.step = math.inf, None, 0, 0, 0
        self.curve: list[tuple[int, float]] = []
        self.loss = torch.zeros(())
        self.stopped = False

    def done(self) -> bool:
        plan = self.plan
        if self.stopped:
            return True
        if self.pretraining:
            return not (self.stale < plan.patience and self.step < plan.max_steps)
        return self.rounds >= plan.last

    def x(self, idx: torch.Tensor) -> torch.Tensor:
        """The encoded rows of a batch: from the whole encoding, or gathered and encoded now."""
        if self.Xt is not None:
            return self.Xt[idx.to(self.device)]
        rows = self.rows.take(idx.numpy())
        return torch.from_numpy(self.net.encoder.transform(rows)).to(self.device)

    def batches(self) -> list[torch.Tensor]:
        """This round's row indices: shuffled epochs, or draws with replacement (pretraining)."""
        n = self.n
        if self.pretraining:
            draw = range(min(self.draws, self.plan.max_steps - self.step))
            return [torch.randint(n, (self.bs,), generator=self.gen) for _ in draw]
        return list(torch.randperm(n, generator=self.gen).split(self.bs))

    def stepped(self, loss: torch.Tensor) -> None:
        self.step, self.loss = self.step + 1, loss

    def evaluate(self) -> None:
        """The hold-out MAE after a round; raises Diverged on a non-finite loss or error."""
        self.rounds += 1
        net, at = self.net, self.step if self.pretraining else self.rounds
        net.module.eval()
        with torch.no_grad():
            val = mae(self.m.y_val, net.predict_encoded(self.Xv))
        loss = self.loss.item()  # once per evaluation: a per-step check would sync a GPU
        if not (math.isfinite(val) and math.isfinite(loss)):
            stage = "pretraining" if self.pretraining else "fine-tuning"
            raise Diverged(f"{stage} diverged at {at}: loss {loss:.3g}, val MAE {val:.3g}")
        if self.pretraining:
            self.optimizer.sched.step(val)
        self.curve.append((at, val))
        if val < self.best * (1 - self.min_gain):
            self.best, self.best_state, self.stale = val, _snapshot(net.module), 0
            if self.m.on_best is not None:
                self.m.on_best(at, val, net.state(self.best_state))
        else:
            self.stale += 1
        if self.m.on_eval is not None and self.m.on_eval(at, val, self.best) is True:
            self.stopped = True

    def result(self) -> Trained:
        if self.best_state is not None:
            self.net.module.load_state_dict(self.best_state)
        return Trained(self.net, self.best, self.step, self.stale, self.curve)


def train_members(
    members: Sequence[Member],
    *,
    device: str = "cpu",
    stacked: StackedForward | None = None,
    on_round: OnRound | None = None,
) -> list[Trained | Diverged]:
    """Train K networks of one architecture and batch size as one: each step is one stacked
    forward and backward (`stacked`) and each member's own AdamW step, so every member keeps its
    own settings, seed, rows, frozen layers and stop rule, and a member whose rule is met leaves
    the batch (the rest carry on smaller). Each result equals training that member alone, up to
    the float order of the stacked matrix products (with dropout, where the family's stacked
    forward draws the masks its module would: the MLP's). Without `stacked` (or for one member) the
    members are trained one after another on their modules' own forward. A member that
    diverges comes back as its `Diverged`, the others unaffected. `on_round`, after each
    round's evaluations, names the members (by index) that leave now: a decision that needs
    every member's value of the round (a pack's successive halving). Targets are standardised;
    the L1 loss; the hold-out MAE after each round; the best weights restored at the end."""
    if len(members) > 1 and stacked is None:
        return [
            r
            for i, m in enumerate(members)
            for r in train_members([m], device=device, on_round=_within(on_round, [i]))
        ]
    runs = [_Run(m, device) for m in members]
    if len({(r.n, r.bs, r.pretraining) for r in runs}) > 1:
        raise ValueError("members trained as one need as many rows and one batch size")
    alike: dict[tuple, list[_Run]] = {}
    for r in runs:
        alike.setdefault(_Optimizer.key(r), []).append(r)
    for group in alike.values():
        _Optimizer(group, device)
    out: dict[int, Trained | Diverged] = {}
    # one network alone runs its module's own forward; a batch keeps the stacked one to its
    # last member (whose dropout masks come from its own generator, not the global one)
    solo = len(runs) == 1 or stacked is None
    active = [i for i, r in enumerate(runs) if not r.done()]
    while active:
        live = [runs[i] for i in active]
        optimizers = list({id(r.optimizer): r.optimizer for r in live}.values())
        for r in live:
            r.net.module.train()
        for idx in zip(*(r.batches() for r in live), strict=True):
            if solo:
                r, i = live[0], idx[0]
                loss = nn.functional.l1_loss(r.net.module(r.x(i)), r.yt[i.to(device)]).unsqueeze(0)
            else:
                assert stacked is not None
                x = torch.stack([r.x(i) for r, i in zip(live, idx, strict=True)])
                y = torch.stack([r.yt[i.to(device)] for r, i in zip(live, idx, strict=True)])
                out_ = stacked([r.net.module for r in live], x, [r.noise for r in live])
                loss = (out_ - y).abs().mean(dim=1)  # each member's own L1 loss
            for r in live:
                for p in r.params:
                    p.grad = None
            loss.sum().backward()  # a member's gradient is that of its own loss alone
            step_all(optimizers, live[0].pretraining)
            for k, r in enumerate(live):
                r.stepped(loss[k].detach())
        diverged: dict[int, Diverged] = {}
        for i in active:
            try:
                runs[i].evaluate()
            except Diverged as e:
                out[i] = diverged[i] = e
        for i in on_round(diverged) if on_round is not None else ():
            runs[i].stopped = True
        left = [i for i in active if i in out or runs[i].done()]
        for i in left:
            runs[i].optimizer.leave(runs[i])
        active = [i for i in active if i not in left]
    return [out[i] if i in out else runs[i].result() for i in range(len(runs))]


def _within(on_round: OnRound | None, chosen: Sequence[int]) -> OnRound | None:
    """`on_round` of a batch as a sub-batch of its `chosen` members sees it (by local index)."""
    if on_round is None:
        return None
    local = {i: j for j, i in enumerate(chosen)}
    return lambda diverged: [
        local[i] for i in on_round({chosen[j]: e for j, e in diverged.items()}) if i in local
    ]


def train(
    start: Callable[[], Network],
    X: np.ndarray | Rows,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    plan: Plan,
    *,
    seed: int,
    device: str = "cpu",
    on_eval: OnEpoch | None = None,
    on_best: OnBest | None = None,
) -> Trained:
    """One network: the batch of one member; raises `Diverged` when it diverges. Rows beyond
    `ENCODE_WHOLE_BYTES` are gathered and encoded per batch: the same numbers, as the encoding
    is row by row."""
    member = Member(start, X, y, X_val, y_val, plan, seed, on_eval, on_best)
    (run,) = train_members([member], device=device)
    if isinstance(run, Diverged):
        raise run
    return run


class TorchFamily(Family):
    """A family trained by `train`; subclasses build the network and its encoder."""

    packs = True

    @abstractmethod
    def build(self, n_in: int, dropout: float) -> nn.Module:
        """A fresh network for n_in input columns, with a `head` to re-initialise and `freeze(k)`
        for its k lowest stages."""

    @abstractmethod
    def fit_encoder(self, X: np.ndarray | Rows) -> Encoder: ...

    @abstractmethod
    def encoder_from_state(self, state: dict) -> Encoder: ...

    def load(self, state: dict, dropout: float = 0.0) -> Network:
        encoder = self.encoder_from_state(state["encoder"])
        module = self.build(int(state["n_in"]), dropout)
        module.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state["weights"].items()})
        n_in, y_center, y_scale = (state[k] for k in ("n_in", "y_center", "y_scale"))
        return Network(module, encoder, int(n_in), float(y_center), float(y_scale))

    def fresh(self, X: np.ndarray | Rows, dropout: float) -> Network:
        """An untrained network, its encoder fitted on X."""
        n_in = X.n_columns if isinstance(X, Rows) else X.shape[1]
        return Network(self.build(n_in, dropout), self.fit_encoder(X), n_in)

    def search_space(
        self, space: FinetuneSpace, baseline: bool
    ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        dists: dict[str, BaseDistribution] = {}
        fixed: dict[str, Any] = {}
        for name, kind in (
            ("lr", "log"),
            ("weight_decay", "log"),
            ("dropout", ""),
            ("epochs", int),
        ):
            v = getattr(space, name)
            if isinstance(v, tuple) and v[0] != v[1]:
                dists[name] = (
                    IntDistribution(*v)
                    if kind is int
                    else FloatDistribution(float(v[0]), float(v[1]), log=kind == "log")
                )
            else:
                v = v[0] if isinstance(v, tuple) else v
                fixed[name] = int(v) if kind is int else float(v)
        for name in ("batch_size", "freeze"):
            v = getattr(space, name)
            choices = sorted(set(v)) if isinstance(v, list) else [v]
            if name == "freeze" and baseline:
                choices = [0]  # nothing pretrained to freeze
            if len(choices) > 1:
                dists[name] = CategoricalDistribution(choices)
            else:
                fixed[name] = int(choices[0])
        return dists, fixed

    def max_epochs(self, space: FinetuneSpace) -> int:
        return max(space.epochs) if isinstance(space.epochs, tuple) else space.epochs

    def pretrain(
        self,
        X: np.ndarray | Rows,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        seed: int,
        X_extra: np.ndarray | None = None,
        device: str = "cpu",
    ) -> Pretrained:
        """`X_extra` (target train features, no labels) joins the input encoding so that features
        rare in the source still get a sensible scale. `X` as `Rows` (a view of the shared pool)
        is read block by block and batch by batch, never copied whole."""
        (run,) = self.pretrain_members([Source(X, y, X_val, y_val, seed, X_extra)], device)
        if isinstance(run, Diverged):
            raise run
        return run

    def stacks_pretraining(self, n_in: int, device: str) -> bool:
        if self.stacked() is None or torch.device(device).type != "cpu":
            return False
        return sum(p.numel() for p in self.build(n_in, 0.0).parameters()) < SMALL_NETWORK

    def pretrain_members(
        self, sources: Sequence[Source], device: str = "cpu"
    ) -> list[Pretrained | Diverged]:
        """Pretrainings of one n trained as one batch (`train_members`), each with its own rows,
        hold-out, seed, plateau schedule and stop; each member's `seconds` is its share of the
        batch's time."""
        start, r = time.perf_counter(), self.pretrain_hp
        plan = Plan(
            r.lr, r.weight_decay, r.batch_size, 0, 0, r.patience, r.min_steps_per_eval, r.max_steps
        )
        members = []
        for s in sources:
            rows = s.X if isinstance(s.X, Rows) else Rows.of(s.X)
            X_fit = rows if s.X_extra is None else rows + Rows.of(s.X_extra)
            start_net = functools.partial(self.fresh, X_fit, 0.0)
            members.append(Member(start_net, rows, s.y, s.X_val, s.y_val, plan, s.seed))
        runs = train_members(members, device=device, stacked=self.stacked())
        share = (time.perf_counter() - start) / len(sources)
        return [
            run
            if isinstance(run, Diverged)
            else Pretrained(
                state=run.net.state(),
                source_val_mae=run.best_val_mae,
                steps=run.steps,
                converged=run.stale >= r.patience,
                seconds=share,
                curve=run.curve,
            )
            for run in runs
        ]

    def stacked(self) -> StackedForward | None:
        """How K of this family's networks run as one, if they can: then fine-tuning members
        train together (`train_members`); else one after another."""
        return None

    def _start(self, X: np.ndarray, hp: dict, pretrained: dict | None) -> Callable[[], Network]:
        dropout = float(hp.get("dropout", 0.0))

        def start() -> Network:
            if pretrained is None:
                return self.fresh(X, dropout)
            net = self.load(pretrained, dropout)
            net.module.head.reset_parameters()
            net.module.freeze(int(hp.get("freeze", 0)))
            return net

        return start

    @staticmethod
    def _plan(hp: dict, stop_epoch: int | None) -> Plan:
        lr, wd, bs, epochs = (float(hp[k]) for k in ("lr", "weight_decay", "batch_size", "epochs"))
        epochs = int(epochs)
        return Plan(lr, wd, int(bs), epochs, min(epochs, stop_epoch or epochs))

    def finetune(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        hp: dict,
        seed: int,
        pretrained: dict | None = None,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
        stop_epoch: int | None = None,
        on_best: OnBest | None = None,
    ) -> FineTuned:
        """hp: lr, weight_decay, epochs, batch_size, freeze, dropout. The head is always new."""
        plan, start = self._plan(hp, stop_epoch), self._start(X, hp, pretrained)
        run = train(
            start,
            X,
            y,
            X_val,
            y_val,
            plan,
            seed=seed,
            device=device,
            on_eval=on_epoch,
            on_best=on_best,
        )
        return _fine_tuned(run)

    def finetune_members(
        self,
        targets: Sequence[Target],
        *,
        hps: Sequence[dict],
        seeds: Sequence[int],
        device: str = "cpu",
        stop_epochs: Sequence[int | None] | None = None,
        on_epochs: Sequence[OnEpoch | None] | None = None,
        on_bests: Sequence[OnBest | None] | None = None,
        on_round: OnRound | None = None,
    ) -> list[FineTuned | Diverged]:
        """`finetune` of several (target, hp, seed): those of one batch size and as many rows
        trained as one batch (`train_members`), one such group after another."""
        k = len(hps)
        members = [
            Member(
                self._start(t.X, hp, t.pretrained),
                t.X,
                t.y,
                t.X_val,
                t.y_val,
                self._plan(hp, stop),
                seed,
                on_epoch,
                on_best,
            )
            for t, hp, seed, stop, on_epoch, on_best in zip(
                targets,
                hps,
                seeds,
                stop_epochs or [None] * k,
                on_epochs or [None] * k,
                on_bests or [None] * k,
                strict=True,
            )
        ]
        results: dict[int, Trained | Diverged] = {}
        for shape in sorted({(m.plan.batch_size, len(m.y)) for m in members}):
            group = [i for i, m in enumerate(members) if (m.plan.batch_size, len(m.y)) == shape]
            runs = train_members(
                [members[i] for i in group],
                device=device,
                stacked=self.stacked(),
                on_round=_within(on_round, group),
            )
            results |= dict(zip(group, runs, strict=True))
        return [_fine_tuned(results[i]) for i in range(len(members))]


def _fine_tuned(run: Trained | Diverged) -> FineTuned | Diverged:
    if isinstance(run, Diverged):
        return run
    return FineTuned(run.net, run.best_val_mae, [val for _, val in run.curve])
