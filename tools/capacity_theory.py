"""The signal-to-noise predictions that docs/experiments.md sets beside pipelines/random_capacity.yaml.

    python tools/capacity_theory.py              # the two theory tables, as markdown
    python tools/capacity_theory.py --n 8 16 32  # at other numbers of stored patterns

Each model reads a stored random bipolar pattern of N bits once (one synchronous step, or one
read) and gets each bit right unless the noise from the other T - 1 patterns outweighs the
signal; with the noise normal, a bit is wrong with probability Phi(-rho), and the bits are
taken as independent: 1 - (1 - Phi(-rho))^N is the chance the pattern is not recalled exactly,
P(Binomial(N, Phi(-rho)) > 3) that more than 3 bits are wrong.

- hn (Hopfield 1982, zero diagonal): field (N - 1) x_i plus (T - 1)(N - 1) random +-1 terms,
  rho^2 = (N - 1) / (T - 1).
- dam n = 3 (Krotov & Hopfield 2016, eq. 3, F(x) = x^3): F(a + 1) - F(a - 1) = 6a^2 + 2 with a
  the overlap without neuron i: signal 6 (N - 1)^2 + 2, each other pattern a random sign times
  6a^2 + 2 with a a sum of N - 1 random +-1 (E a^2 = N - 1, E a^4 = 3 (N - 1)^2 - 2 (N - 1)),
  rho^2 ~ N^2 / (3T) for large N (their N^(n-1) / (2n - 3)!!).
- sdm, Kanerva's memory of L locations firing with probability p: the signal-to-noise ratio
  of Kanerva's analysis as rederived here, rho^2 = Lp / (1 + pT + p^3 L T): the signal Lp
  against 1 (the signal's own spread), pT (each other pattern's Binomial(L, p^2) shared
  locations) and p^3 L T (their squared mean); and the refined one of tests/test_sdm.py (signal k, the
  number of locations the pattern fires, ~ Binomial(L, p); given k the noise variance is
  (T - 1)(k p (1 - p) + (k p)^2); a 0 sum reads +1, so half the ties are errors; averaged over k).
  Both take the data written independent of the addresses (hetero-association); reading a
  pattern written at itself does better (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import math

from amemctl.core.sdm import activation_probability

N = 64  #: bits per pattern (random_capacity.yaml: `random` at size 8)
LOCATIONS, RADIUS = 2000, 23  #: its Kanerva memory
LOADS = [4, 8, 12, 16, 24, 32, 64, 128, 256, 512]


def phi(x: float) -> float:
    """The standard normal cdf."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def hn(t: int) -> float:
    """Per-bit error of one zero-diagonal Hopfield step from a stored pattern."""
    return phi(-math.sqrt((N - 1) / max(t - 1, 1e-9)))


def dam3(t: int) -> float:
    """Per-bit error of one step of Krotov & Hopfield's eq. 3 with F(x) = x^3."""
    m = N - 1
    a2, a4 = m, 3 * m * m - 2 * m
    noise = max(t - 1, 1e-9) * (36 * a4 + 24 * a2 + 4)
    return phi(-(6 * m * m + 2) / math.sqrt(noise))


def kanerva(t: int) -> float:
    """Kanerva's estimate of the per-bit error of one read at a stored address."""
    p = activation_probability(N, RADIUS)
    return phi(-math.sqrt(LOCATIONS * p / (1 + p * t + p**3 * LOCATIONS * t)))


def kanerva_refined(t: int) -> float:
    """The per-bit error with the signal's spread kept as signal (tests/test_sdm.py)."""
    p = activation_probability(N, RADIUS)
    total = 0.0
    for k in range(LOCATIONS + 1):
        weight = math.exp(math.lgamma(LOCATIONS + 1) - math.lgamma(k + 1) - math.lgamma(LOCATIONS - k + 1) + k * math.log(p) + (LOCATIONS - k) * math.log1p(-p))
        if k == 0:
            total += weight * 0.5
            continue
        sd = math.sqrt(max(t - 1, 1e-9) * (k * p * (1 - p) + (k * p) ** 2))
        total += weight * 0.5 * (phi((-k - 0.5) / sd) + phi((-k + 0.5) / sd))
    return total


def not_exact(error: float) -> float:
    return 1 - (1 - error) ** N


def more_than(bits: int, error: float) -> float:
    return 1 - sum(math.comb(N, j) * error**j * (1 - error) ** (N - j) for j in range(bits + 1))


MODELS = {"hn": hn, "dam n=3": dam3, "sdm (Kanerva), Kanerva's estimate": kanerva, "sdm (Kanerva), refined": kanerva_refined}


def table(title: str, loads: list[int], cell) -> str:
    lines = [f"**Theory: {title}** (%)", "", "| model \\ n | " + " | ".join(map(str, loads)) + " |", "|---|" + "---:|" * len(loads)]
    for name, error in MODELS.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * max(0.0, cell(error(t))):.1f}" for t in loads) + " |")  # 1 - (sum of 1 - tiny) rounds below 0
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", nargs="+", type=int, default=LOADS, help="numbers of stored patterns")
    args = parser.parse_args(argv)
    print(table("not recalled exactly", args.n, not_exact))
    print()
    print(table("more than 3 of 64 bits wrong", args.n, lambda e: more_than(3, e)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
