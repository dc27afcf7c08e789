#!/usr/bin/env python3
"""Two or more builds (or settings) of one bench measurement, their steps in turns.

    scripts/bench-ab.py [--steps N] [--seq 128] [--batch 10] MODEL:MODE BUILD BUILD...

BUILD is the path of an `xtask` binary, optionally prefixed with environment settings:
`DAO_X=1,DAO_Y=2@target/release/xtask`. Each BUILD runs `xtask bench --one MODEL:MODE
--take-turns` in its own process; once all are set up, they step one at a time, one step
each per round, the first place rotating (the place ran slower: BENCHMARKS.md, "Fifteenth
session"). Prints each build's median (step ms, or sentences/s for `infer` modes) and its
ratio to the first build's; then the ratio round by round (each build's step against the first
build's step of the same round, timed here, warm-up rounds left out): its median and quartiles,
which show whether a difference of that size can be told from the host's noise.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def start(build, spec, args):
    env = dict(os.environ)
    if "@" in build:
        settings, build = build.split("@", 1)
        for setting in settings.split(","):
            key, value = setting.split("=", 1)
            env[key] = value
    batch = "32" if spec.split(":", 1)[1].startswith("infer") else str(args.batch)
    command = [build, "bench", "--one", spec, "--device", "cpu", "--seq", str(args.seq),
               "--batch", batch, "--dtype", "f32", "--take-turns", "--steps", str(args.steps)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    first = child.stdout.readline().strip()
    if first != "turn":
        sys.exit(f"{build}: expected its first turn, got {first!r}")
    return child


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="MODEL:MODE, e.g. minilm:lora8-dao")
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    children = [start(build, args.spec, args) for build in args.builds]
    results = [None] * len(children)
    # Each build's steps as timed here, one a round.
    seconds = [[] for _ in children]
    active = list(range(len(children)))
    rounds = 0
    while active:
        first = rounds % len(active)
        rounds += 1
        for i in active[first:] + active[:first]:
            child = children[i]
            begun = time.perf_counter()
            child.stdin.write("go\n")
            child.stdin.flush()
            line = child.stdout.readline().strip()
            # The last step's time also holds the child's summary (the same for every build).
            seconds[i].append(time.perf_counter() - begun)
            if line == "turn":
                continue
            if not line.startswith("{") or child.wait() != 0:
                sys.exit(f"{args.builds[i]} failed")
            results[i] = json.loads(line)
        active = [i for i in active if results[i] is None]
    key = "sentences_per_s" if "sentences_per_s" in results[0] else "step_ms"
    base = results[0][key]
    for build, result in zip(args.builds, results):
        print(f"{result[key]:10.2f} {key}  {result[key] / base:6.3f}  "
              f"cpu_util {result['cpu_util']:.2f}  peak {result['peak_mem_bytes'] >> 20} MiB  {build}")
    # The timed steps are each build's last `--steps` ones; the rounds before them warm up.
    timed = min(args.steps, *(len(times) for times in seconds))
    throughput = key == "sentences_per_s"
    for build, steps in list(zip(args.builds, seconds))[1:]:
        ratios = [
            (first / own if throughput else own / first)
            for own, first in zip(steps[-timed:], seconds[0][-timed:])
        ]
        if len(ratios) < 2:
            continue
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        print(f"  round by round: median {median:.3f}, quartiles {q1:.3f}–{q3:.3f} "
              f"({len(ratios)} rounds)  {build}")


if __name__ == "__main__":
    main()
