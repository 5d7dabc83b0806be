"""Benchmark: the merge's run-consistency test on honest and biased campaigns.

Generated campaigns (bench/consistency_model.py: exact compound sums of a per-history
model with rare large deposits and many zero histories, 20 x 20 x 10 voxels) of every
shape of issue 20, and campaigns made with the shipped example (pencil_beam.py) at
unequal histories. Per line: campaigns in which any run was flagged (honest shapes:
false alarms) or the biased run was named (power), with a 95 % Clopper-Pearson interval.

    python -m bench.topas_consistency [--campaigns 1000] [--example 1000] [--only NAME]
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.consistency_model import Shape, check
from common.topas import ScorerAccumulator, read_scorer
from common.topas.consistency import ConsistencyReport
from common.topas.runs import contribution

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "water_phantom"

SHAPES = [
    Shape("10 x 1e5", (100000,) * 10),
    Shape("2 x 1e5", (100000,) * 2),
    Shape("10 runs spread 33k-100k", tuple(range(33000, 100001, 7400))),
    Shape("correlated voxels, 10 x 1e5", (100000,) * 10, correlated=True),
    Shape("energy-binned (4 bins), 5 x 1e5 + 5 x 2e4", (100000,) * 5 + (20000,) * 5,
          energy_bins=4),
    Shape("200 x 2e4", (20000,) * 200),
    Shape("9 x 1e5 + 1 x 3.3e4", (100000,) * 9 + (33000,)),
    Shape("9 x 1e5 + 1 x 1e4", (100000,) * 9 + (10000,)),
    Shape("2 runs, 1e5 and 1e4", (100000, 10000)),
    Shape("4 x 1e6 + 1 x 1e3", (1000000,) * 4 + (1000,)),
    Shape("2 merged outputs, 1e6 and 9e6", (1000000, 9000000)),
    Shape("1e3 first, then 9 x 3e6", (1000,) + (3000000,) * 9),
    Shape("ratio 1,000: 3 x 1e7 + 3 x 1e4", (10 ** 7,) * 3 + (10 ** 4,) * 3),
    Shape("correlated, 9 x 1e5 + 1 x 1e4", (100000,) * 9 + (10000,), correlated=True),
]
BIASED = [
    Shape("+3 % in run 3 of 10 x 1e5", (100000,) * 10, 3, 1.03),
    Shape("+3 % in run 3, run 0 of 1e4", (10000,) + (100000,) * 9, 3, 1.03),
    Shape("+3 % in run 3, run 0 of 1e3, 9 x 3e6", (1000,) + (3000000,) * 9, 3, 1.03),
    Shape("-3 % in run 3, correlated, 10 x 1e5", (100000,) * 10, 3, 0.97, correlated=True),
    Shape("+2 % in run 3 of 10 x 1e5", (100000,) * 10, 3, 1.02),
    Shape("+2 % in run 3 of 10 x 1e4", (10000,) * 10, 3, 1.02),
    Shape("+2 % in run 3, correlated, 10 x 1e5", (100000,) * 10, 3, 1.02, correlated=True),
    Shape("+2 % in run 3, correlated, 10 x 1e4", (10000,) * 10, 3, 1.02, correlated=True),
]


@dataclass(frozen=True)
class Line:
    name: str
    hits: int
    campaigns: int
    biased: bool
    bins: int
    seconds: float

    def text(self) -> str:
        low, high = clopper_pearson(self.hits, self.campaigns)
        what = "biased run named" if self.biased else "false alarms"
        return (f"| {self.name} | {what}: {self.hits} / {self.campaigns} = "
                f"{self.hits / self.campaigns:.1%} (95 %: {low:.2%}-{high:.2%}) | "
                f"{self.bins} | {self.seconds:.0f} s |")


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact 95 % interval of a binomial proportion (bisection on its tails)."""
    from math import exp, lgamma, log

    def pmf(i: int, p: float) -> float:
        if p <= 0 or p >= 1:
            return float((i == 0) if p <= 0 else (i == n))
        return exp(lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * log(p)
                   + (n - i) * log(1 - p))

    def solve(f, target: float) -> float:  # type: ignore[no-untyped-def]
        low, high = 0.0, 1.0  # f increasing in p
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if f(middle) < target else (low, middle)
        return (low + high) / 2
    lower = 0.0 if k == 0 else solve(lambda p: sum(pmf(i, p) for i in range(k, n + 1)), 0.025)
    upper = 1.0 if k == n else solve(lambda p: -sum(pmf(i, p) for i in range(k + 1)), -0.025)
    return lower, upper


def measure(shape: Shape, campaigns: int) -> Line:
    started = time.perf_counter()
    hits, bins = 0, []
    for seed in range(campaigns):
        report = check(shape, 10_000 + seed)
        flagged = {run.source for run in report.inconsistent}
        hits += (f"run{shape.biased}" in flagged) if shape.biased is not None else bool(flagged)
        bins.append(report.bins)
    return Line(shape.name, hits, campaigns, shape.biased is not None,
                int(np.median(bins)), time.perf_counter() - started)


@functools.lru_cache(maxsize=1)
def _example_module():  # type: ignore[no-untyped-def]
    """pencil_beam.py, imported once: a campaign's runs are made in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pencil_beam", EXAMPLE / "pencil_beam.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pencil_beam"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def example_runs(folder: Path, sizes: tuple[int, ...], seed: int) -> list[Path]:
    """The example's runs of one campaign (seeds 100,000 + 10 x campaign + run), made as
    `SIM_SEED=... EXAMPLE_HISTORIES=... python pencil_beam.py water_phantom.txt` does."""
    beam = _example_module()
    runs = []
    for r, histories in enumerate(sizes):
        run = folder / f"c{seed}r{r}"
        run.mkdir(parents=True)
        setup = beam.build_setup(str(EXAMPLE / "water_phantom.txt"), {
            "SIM_SEED": str(100_000 + 10 * seed + r), "EXAMPLE_HISTORIES": str(histories)})
        scorer, _ = beam.run(setup)
        beam.write_topas_csv(str(run / "DoseAtPhantom.csv"), scorer, setup)
        runs.append(run)
    return runs


def example_report(runs: list[Path], bias: dict[int, float]) -> ConsistencyReport:
    accumulator = ScorerAccumulator(expected_runs=len(runs))
    for r, run in enumerate(runs):
        scorer = read_scorer(run / "DoseAtPhantom.csv")
        factor = bias.get(r, 1.0)
        if factor != 1.0:  # every deposit of this run scaled: Sum by f, M2 by f^2
            values = dict(scorer.values)
            values["Sum"] = values["Sum"] * factor
            values["Second_Moment"] = values["Second_Moment"] * factor ** 2
            scorer = replace(scorer, values=values)
        accumulator.add_contribution(contribution(scorer, f"run{r}"), f"run{r}")
    return accumulator.consistency()


def measure_example(sizes: tuple[int, ...], campaigns: int) -> list[Line]:
    started = time.perf_counter()
    honest = biased = 0
    bins = []
    with tempfile.TemporaryDirectory(prefix="bench-consistency-") as tmp:
        for seed in range(campaigns):
            runs = example_runs(Path(tmp) / str(seed), sizes, seed)
            report = example_report(runs, {})
            honest += bool(report.inconsistent)
            bins.append(report.bins)
            shifted = example_report(runs, {0: 1.03})
            biased += "run0" in {run.source for run in shifted.inconsistent}
            for run in runs:
                (run / "DoseAtPhantom.csv").unlink()
    seconds = time.perf_counter() - started
    name = "the example (pencil_beam.py), " + " + ".join(f"{n:,}" for n in sizes)
    return [Line(name, honest, campaigns, False, int(np.median(bins)), seconds),
            Line(name + ", run 0 (the largest) +3 %", biased, campaigns, True,
                 int(np.median(bins)), seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--example", type=int, default=1000,
                        help="campaigns made with the example (0: none)")
    parser.add_argument("--example-sizes", default="300000,30000")
    parser.add_argument("--only", help="only the lines whose name holds this text")
    args = parser.parse_args()
    print("| campaign (generated: 20 x 20 x 10 voxels, skewed deposits) | outcome | "
          "median bins tested | time |\n|---|---|---|---|", flush=True)
    for shape in SHAPES + BIASED:
        if args.only and args.only not in shape.name:
            continue
        campaigns = args.campaigns if len(shape.sizes) < 100 else max(args.campaigns, 1000)
        print(measure(shape, campaigns).text(), flush=True)
    if args.example:
        sizes = tuple(int(n) for n in args.example_sizes.split(","))
        for line in measure_example(sizes, args.example):
            print(line.text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
