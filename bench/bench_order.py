"""How uniformly blends reach the network, and what reading them in that order costs (issue 18).

    python bench/bench_order.py out/mixed                    # statistics of one shard directory
    python bench/bench_order.py out/mixed --read 400         # and read throughput, unit 32 vs 1
    python bench/bench_order.py --no-sim /work/cv/out/mixed  # without the 300k simulation

1. **Order statistics.** ``blendgen mix`` writes each dominant image's blends next to each
   other. For the first ``--batches`` training batches of one rank (``--batch-size`` samples,
   ``--workers`` loader workers, handed back round-robin as the DataLoader does) it counts the
   distinct dominant images, and the repeated dominants per batch (a batch's size minus its
   distinct dominants), for (a) the old layout (units of 32 samples, a 256-sample buffer),
   (b) TrainConfig's defaults and (c) a uniform shuffle of the same samples. (a) and (b) come
   from trainer.data's own functions (make_units, epoch_addresses, rank_span, worker_part,
   shuffle_buffer, via rank_batches): the order training sees, computed without reading images.
   Each figure is the mean over ``--seeds`` seeds; (c) also as its exact expectation. It runs
   on each shard directory given (the dominant is the shards' ``dominant_id`` field) and on a
   simulated VOC-aug-sized plan: 300,000 samples, 10,582 dominants of ~28 consecutive blends,
   shards of 1,000 (addresses only).
2. **Read throughput** (``--read N``): samples/s of ShardStream iteration (read, checksum,
   decode, train transform, collate; ``workers=0``) over N samples of an epoch with units of
   32 against units of 1, on the same directory, alternating batch by batch so that both meet
   the same machine load, one epoch's order per round; then raw reads alone (read_raw of 4N
   addresses of each order: HDF5 access and checksum, no decoding). Medians over the rounds
   of wall-clock and CPU-time rates and of their ratio. The files are read once first, so
   both settings read from the page cache.

Prints the figures and writes them to bench/results/bench_order.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendgen.shards.directory import ShardDir  # noqa: E402
from blendgen.shards.schema import as_str  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import ShardStream, rank_batches  # noqa: E402
from trainer.transforms import train_transform  # noqa: E402

OLD = {"unit": 32, "buffer": 256}  # the layout before issue 18
DEFAULTS = TrainConfig(shards="")
NEW = {"unit": DEFAULTS.unit, "buffer": DEFAULTS.shuffle_buffer}


def order_stats(dominants: np.ndarray, batches: list[list[int]]) -> dict:
    """Distinct dominants over ``batches`` (lists of flat sample indices), mean repeats per batch."""
    per_batch = [dominants[b] for b in batches]
    distinct = len(np.unique(np.concatenate(per_batch))) if per_batch else 0
    repeated = float(np.mean([len(d) - len(np.unique(d)) for d in per_batch])) if per_batch else 0.0
    return {"distinct": distinct, "repeated_per_batch": repeated}


def uniform_expectation(dominants: np.ndarray, batches: int, batch_size: int) -> dict:
    """The exact expectation of both figures under a uniform shuffle: a dominant with g of the
    N samples is missed by M draws without replacement with probability C(N-g, M) / C(N, M)."""
    n = len(dominants)
    groups = np.bincount(dominants)
    groups = groups[groups > 0]

    def expected_distinct(m: int) -> float:
        log_c = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731
        counts = np.bincount(groups)  # how many dominants have g samples
        miss = sum(c * math.exp(log_c(n - g, m) - log_c(n, m)) for g, c in enumerate(counts) if c and n - g >= m)
        return len(groups) - miss

    m = min(n, batches * batch_size)
    return {"distinct": expected_distinct(m), "repeated_per_batch": batch_size - expected_distinct(batch_size)}


def loader_batches(sizes: list[int], args, seed: int, unit: int, buffer: int) -> list[list[int]]:
    """The first ``args.batches`` batches of rank 0 of 1 as flat sample indices."""
    first = np.cumsum(sizes) - np.asarray(sizes)
    out = []
    for batch in rank_batches(sizes, args.batch_size, seed=seed, epoch=0, num_workers=args.workers, unit=unit,
                              buffer=buffer):
        out.append([int(first[s] + i) for s, i in batch])
        if len(out) == args.batches:
            break
    return out


def uniform_batches(n: int, args, seed: int) -> list[list[int]]:
    order = np.random.default_rng([seed, 18]).permutation(n)[: args.batches * args.batch_size]
    return [order[i:i + args.batch_size].tolist() for i in range(0, len(order), args.batch_size)]


def compare(name: str, sizes: list[int], dominants: np.ndarray, args) -> dict:
    """(a) old, (b) new default, (c) uniform: each figure the mean over the seeds."""
    rows = {}
    for label, make in (("old (unit 32, buffer 256)", lambda s: loader_batches(sizes, args, s, **OLD)),
                        (f"new (unit {NEW['unit']}, buffer {NEW['buffer']})",
                         lambda s: loader_batches(sizes, args, s, **NEW)),
                        ("uniform shuffle", lambda s: uniform_batches(len(dominants), args, s))):
        stats = [order_stats(dominants, make(seed)) for seed in range(args.seeds)]
        rows[label] = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        rows[label]["distinct_min_max"] = [min(s["distinct"] for s in stats), max(s["distinct"] for s in stats)]
        rows[label]["seed0"] = stats[0]
    rows["uniform, exact expectation"] = uniform_expectation(dominants, args.batches, args.batch_size)
    n_dom = len(np.unique(dominants))
    per = np.bincount(dominants)
    per = per[per > 0]
    runs = 1 + int(np.count_nonzero(dominants[1:] != dominants[:-1])) if len(dominants) else 0
    print(f"\n{name}: {len(dominants)} samples, {len(sizes)} shards, {n_dom} dominants "
          f"({len(dominants) / n_dom:.1f} blends each, {per.min()}-{per.max()}; stored in runs of "
          f"{len(dominants) / max(runs, 1):.1f} consecutive samples); first {args.batches} batches of "
          f"{args.batch_size}, {args.workers} workers, 1 rank, mean of {args.seeds} seeds")
    print(f"  {'order':<28} {'distinct dominants':>18} {'(min-max)':>12} {'repeated / batch':>17}"
          f" {'seed 0: distinct':>17} {'repeated':>9}")
    for label, r in rows.items():
        lo, hi = r.get("distinct_min_max", ("", ""))
        seed0 = r.get("seed0")
        tail = f" {seed0['distinct']:>17} {seed0['repeated_per_batch']:>9.3f}" if seed0 else ""
        span = f"({lo}-{hi})" if seed0 else ""
        print(f"  {label:<28} {r['distinct']:>18.1f} {span:>12} {r['repeated_per_batch']:>17.3f}{tail}")
    return {"samples": len(dominants), "shards": len(sizes), "dominants": n_dom,
            "blends_per_dominant": [int(per.min()), float(per.mean()), int(per.max())],
            "mean_run": len(dominants) / max(runs, 1), "orders": rows}


def directory_dominants(path: Path) -> tuple[list[int], np.ndarray]:
    """Shard sizes and every sample's dominant image (as an integer id), in directory order."""
    shards = ShardDir.open(path)
    sizes, names = [], []
    for p in shards.shard_paths:
        with h5py.File(p, "r") as f:
            column = f["dominant_id"][:]
        sizes.append(len(column))
        names.extend(as_str(v) for v in column)
    _, ids = np.unique(np.array(names), return_inverse=True)
    return sizes, ids


def simulated_plan(samples: int, dominants: int, shard_size: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """A mix plan's dominant column: ``dominants`` groups of consecutive rows (sizes differing by
    at most one, in a seeded order), cut into shards of ``shard_size``."""
    q, r = divmod(samples, dominants)
    group = np.full(dominants, q)
    group[np.random.default_rng(seed).permutation(dominants)[:r]] += 1
    ids = np.repeat(np.arange(dominants), group)
    sizes = [min(shard_size, samples - s) for s in range(0, samples, shard_size)]
    return sizes, ids


def timed_batches(iterators: dict, batches: int) -> dict:
    """Take ``batches`` batches from each iterator, alternating one batch at a time so both
    meet the same machine load; per iterator: samples, wall seconds, CPU seconds."""
    out = {k: {"samples": 0, "wall": 0.0, "cpu": 0.0} for k in iterators}
    for _ in range(batches):
        for k, it in iterators.items():
            w, c = time.perf_counter(), time.process_time()
            n = len(next(it))
            out[k]["wall"] += time.perf_counter() - w
            out[k]["cpu"] += time.process_time() - c
            out[k]["samples"] += n
    return out


def bench_read(path: Path, args) -> dict:
    """Units of 32 against units of 1 on the same directory: full ShardStream batches (read,
    checksum, decode, transform, collate) and raw reads alone (read_raw: the HDF5 access and
    the checksum, nothing decoded), each round on another epoch's order."""
    shards = ShardDir.open(path)
    for p in shards.shard_paths:  # into the page cache, for both settings alike
        p.read_bytes()
    sizes = [len(r) for r in shards.readers()]
    units = (32, 1)
    rounds: dict = {"stream": [], "raw": []}
    for r in range(args.rounds):
        order = units if r % 2 == 0 else units[::-1]  # alternate which goes first
        streams = {}
        for u in order:
            stream = ShardStream(shards, train_transform(args.crop, (1.0, 1.0)), args.batch_size, shuffle=True,
                                 drop_last=True, seed=0, unit=u)
            stream.set_epoch(r)
            it = (b["key"] for b in stream)
            next(it)  # the first batch opens the shards and loads their small columns
            streams[u] = it
        rounds["stream"].append(timed_batches(streams, args.read // args.batch_size))
        readers = shards.readers()
        for reader in readers:
            reader.key(0)  # open and load, outside the timing
        raws = {}
        for u in order:
            batches = rank_batches(sizes, args.batch_size, seed=0, epoch=r, num_workers=1, unit=u)
            raws[u] = ([readers[s].read_raw(i) for s, i in batch] for batch in batches)
        rounds["raw"].append(timed_batches(raws, 4 * args.read // args.batch_size))
    out = {"samples_per_round": args.read, "rounds": args.rounds, "crop": args.crop}
    print(f"\nread throughput, {path}: {args.rounds} rounds, units of 32 and 1 alternating batch by batch "
          f"(workers=0), median over rounds")
    for kind, what in (("stream", f"ShardStream batches, {args.read} samples/round, crop {args.crop}"),
                       ("raw", f"read_raw only, {4 * args.read} samples/round")):
        res = {}
        for clock in ("wall", "cpu"):
            rate = {u: statistics.median(t[u]["samples"] / t[u][clock] for t in rounds[kind]) for u in units}
            ratio = statistics.median((t[1]["samples"] / t[1][clock]) / (t[32]["samples"] / t[32][clock])
                                      for t in rounds[kind])
            res[clock] = {"unit 32": rate[32], "unit 1": rate[1], "ratio_unit1_over_unit32": ratio}
            print(f"  {what}, {clock:>4} clock: unit 32 {rate[32]:8.1f} samples/s, unit 1 {rate[1]:8.1f} samples/s, "
                  f"ratio {ratio:.3f}")
        out[kind] = res
    out["rounds_detail"] = rounds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="shard directories (e.g. out/mixed)")
    ap.add_argument("--batches", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    ap.add_argument("--workers", type=int, default=DEFAULTS.workers, help="loader workers of the simulated rank")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--no-sim", action="store_true", help="skip the 300,000-sample simulated plan")
    ap.add_argument("--read", type=int, default=0, help="samples per round of the read benchmark (0 = none)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench_order.json")
    args = ap.parse_args()

    results: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("dirs", "json")}}
    for path in args.dirs:
        sizes, dominants = directory_dominants(path)
        results[str(path)] = compare(str(path), sizes, dominants, args)
        if args.read:
            results[str(path)]["read"] = bench_read(path, args)
    if not args.no_sim:
        t = time.perf_counter()
        sizes, dominants = simulated_plan(300_000, 10_582, 1000)
        results["simulated 300k"] = compare("simulated VOC-aug plan", sizes, dominants, args)
        print(f"  ({time.perf_counter() - t:.1f} s for {3 * args.seeds} epoch orders of 300,000 samples)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
