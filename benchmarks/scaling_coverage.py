"""Coverage of the scaling fit's intervals on synthetic studies, and the bootstrap's cost.

    python benchmarks/scaling_coverage.py [--studies 1000] [--n-boot 1000] [--seed 0]

For studies of 6-8 sizes x 5 repetitions with known D, α, C (s2r_ray.scaling.simulate), prints
the share whose 90% interval covers the truth, with PowerLawFit's bootstrap (deviations
rescaled by sqrt(R/(R-1))) and with a plain percentile bootstrap, under two noise models:
realistic (up to 70% of the noise a per-repetition offset shared by all sizes) and fully
independent noise. Then the time of 1000 resamples (resampling + every refit) at 6, 7 and 8
sizes, and of a whole PowerLawFit.fit; wall time and process CPU time (on a busy machine the
CPU time is the better guide to what an idle one would take).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from s2r_ray.scaling import PowerLawFit
from s2r_ray.scaling.bootstrap import resample_means
from s2r_ray.scaling.groups import fit_weights, group_repetitions
from s2r_ray.scaling.powerlaw import fit_batch
from s2r_ray.scaling.simulate import coverage, synthetic_study

QUANTITIES = ("alpha", "C", "D", "mae_10x")


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and median CPU seconds of fn()."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def study_with(sizes: int):
    rng = np.random.default_rng(1)
    while True:
        table, _ = synthetic_study(rng)
        if table["n"].nunique() == sizes:
            return table


def bootstrap_once(table, n_boot: int, seed: int) -> None:
    groups = group_repetitions(table)
    means, var = resample_means(groups, n_boot, np.random.default_rng(seed))
    fit_batch(groups.n, means, fit_weights(var, groups.counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    se = np.sqrt(0.9 * 0.1 / args.studies)
    print(
        f"coverage of 90% intervals: {args.studies} synthetic studies, 6-8 sizes x 5 "
        f"repetitions, n_boot={args.n_boot} (binomial s.e. ±{se:.3f})"
    )
    print(
        f"  {'noise':12s} {'bootstrap':9s} "
        + " ".join(f"{q:>8s}" for q in QUANTITIES)
        + "  median α width"
    )
    for noise, shared in (("realistic", 0.7), ("independent", 0.0)):
        for label, inflate in (("rescaled", True), ("plain", False)):
            t0 = time.perf_counter()
            cov = coverage(
                args.studies, args.n_boot, seed=args.seed, shared_max=shared, inflate=inflate
            )
            per = (time.perf_counter() - t0) / args.studies * 1000
            print(
                f"  {noise:12s} {label:9s} "
                + " ".join(f"{cov[q]:8.3f}" for q in QUANTITIES)
                + f"  {cov['median_alpha_width']:.3f}  ({per:.0f} ms/study)",
                flush=True,
            )

    print(
        f"bootstrap, {args.n_boot} resamples x 5 repetitions, median of 15 "
        "(resampling + weights + all refits):"
    )
    for sizes in (6, 7, 8):
        table = study_with(sizes)
        wall, cpu = timed(lambda t=table: bootstrap_once(t, args.n_boot, 0), 15)
        print(f"  {sizes} sizes: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU")
    table = study_with(8)
    wall, cpu = timed(lambda: PowerLawFit(n_boot=args.n_boot).fit(table).to_dict(), 5)
    print(
        f"whole PowerLawFit.fit + to_dict, 8 sizes (alternatives, backtest included): "
        f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU"
    )


if __name__ == "__main__":
    main()
