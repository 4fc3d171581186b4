"""Times technique 1 (`schedule.max_pairwise_distance`) on uniform random images.

Run from the repository root:

    python benchmarks/max_distance.py --num-points 10000 --dim 3072 --repeats 3

Prints one JSON line: the time of the first call (jit compilation plus one run) and the median
of the warm calls, in seconds. On a 2-core CPU, 10,000 CIFAR-sized points (D = 3072) take about
4–6 s warm.
"""

import argparse
import json
import os
import statistics
import sys
import time

# Lets `python benchmarks/max_distance.py` import the library without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ncsn_jax import schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-points", type=int, default=10_000, help="images N")
    parser.add_argument("--dim", type=int, default=3072, help="pixels per image D (H·W·C)")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls after the first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images")
    args = parser.parse_args()
    if args.num_points < 2 or args.dim < 1 or args.repeats < 1:
        parser.error("need --num-points >= 2, --dim >= 1 and --repeats >= 1")

    images = np.random.default_rng(args.seed).random((args.num_points, args.dim), np.float32)
    # max_points = N so that every point is used, whatever N is.
    start = time.perf_counter()
    distance = schedule.max_pairwise_distance(images, max_points=args.num_points)
    first_call_s = time.perf_counter() - start
    warm_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        schedule.max_pairwise_distance(images, max_points=args.num_points)
        warm_s.append(time.perf_counter() - start)

    print(json.dumps({
        "benchmark": "max_pairwise_distance",
        "num_points": args.num_points,
        "dim": args.dim,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "first_call_s": round(first_call_s, 3),
        "warm_median_s": round(statistics.median(warm_s), 3),
        "repeats": args.repeats,
        "max_distance": distance,
    }))


if __name__ == "__main__":
    main()
