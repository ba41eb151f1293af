#!/usr/bin/env python3
"""Side-by-side benchmark of `dprune annotate` against the Python references
../shared/bench/ref_votek.py and ref_ideal.py (issue 5).

Runs both tools on the same pool, on the same machine, in the same run, and prints
speed as a ratio (reference wall time / dprune wall time; > 1 means dprune is faster)
and selections as overlap. Wall times are whole processes (read Parquet, kNN graph,
selection, write), measured here the same way for both sides (os.wait4 also gives the
peak RSS); the phase times each tool reports are listed too.

    pip install faiss-cpu scikit-learn pyarrow numpy hnswlib
    cargo build --release --bin dprune
    python benches/compare_annotate.py --data /tmp/dpa            # 20,000 x 384 pool

Data (made with ../shared/bench/gen_data.py if missing): --n 20000 --dim 384
--concepts 1000 --shards 1. Both sides use exact kNN on mean-centred cosines.

Cases:
  votek   fast vote-k, k = 150, budget 100. Same selection rule on both sides, so the
          orders should be identical (differences can only come from float near-ties
          in the kNN lists).
  ideal   IDEAL, k = 10, budget 100. ref_ideal.py --impl fast (CELF on 10 live-edge
          samples, first seed = node 0) against dprune with its defaults (100
          realisations, first seed by greedy argmax) and with the reference's settings
          (10 realisations, --ideal-first index0). Random draws differ between the two
          programs, so selections are compared by overlap only.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(cmd, env=None):
    """Runs cmd with os.wait4 for the child's own peak RSS; returns (stdout, wall s, RSS MiB)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-3000:]}")
    return out, wall, ru.ru_maxrss / 1024.0


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def env_threads(n):
    e = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        e[v] = str(n)
    return e


def ensure_data(args):
    d = os.path.join(args.data, f"pool{args.n}")
    if not glob.glob(os.path.join(d, "*.parquet")):
        print(f"generating {args.n} x 384 ...", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(args.shared, "gen_data.py"), "--n", str(args.n), "--dim", "384",
                        "--concepts", "1000", "--shards", "1", "--out", d], check=True, stdout=subprocess.DEVNULL)
    return sorted(glob.glob(os.path.join(d, "*.parquet")))


def ref_ids(path):
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def dprune_ids(path):
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=["id", "dprune_rank"])
    ids = t.column("id").to_pylist()
    rank = t.column("dprune_rank").to_pylist()
    return [i for _, i in sorted(zip(rank, ids))]


def compare(a, b):
    """Overlap of two selections and where their orders first differ."""
    first_diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return {
        "overlap": round(len(set(a) & set(b)) / max(1, len(a)), 4),
        "identical_order": a == b,
        "first_difference_at": first_diff,
    }


def run_dprune(args, data, method, name, extra):
    out = os.path.join(args.work, f"{name}.parquet")
    cmd = [args.dprune, "annotate", *data, "-o", out, "--overwrite", "--quiet", "--method", method,
           "--budget", str(args.budget), "--embedding-col", "embedding", "--id-col", "id", "--knn", "exact",
           "--threads", str(args.threads), *extra]
    _, wall, rss = timed(cmd)
    rep = json.load(open(os.path.join(args.work, f"{name}.report.json")))
    return dprune_ids(out), wall, rss, rep


def run_ref(args, data, script, name, extra):
    out = os.path.join(args.work, f"{name}.txt")
    cmd = [sys.executable, os.path.join(args.shared, script), *data, "--budget", str(args.budget), "--knn", "exact",
           "--threads", str(args.threads), "--out", out, *extra]
    stdout, wall, rss = timed(cmd, env_threads(args.threads))
    return ref_ids(out), wall, rss, last_json(stdout)


def median_runs(fn, repeats):
    runs = [fn() for _ in range(repeats)]
    walls = [r[1] for r in runs]
    ids, _, rss, rep = runs[-1]
    return ids, statistics.median(walls), walls, rss, rep


def case_votek(args, data, res):
    ref = median_runs(lambda: run_ref(args, data, "ref_votek.py", "ref_votek", ["--k", "150"]), args.repeats)
    dp = median_runs(lambda: run_dprune(args, data, "fast-votek", "dp_votek", ["--votek-k", "150"]), args.repeats)
    res["votek"] = {
        "ref_wall_s": round(ref[1], 3), "ref_walls": [round(w, 3) for w in ref[2]], "ref_rss_mb": round(ref[3]),
        "ref_phases_s": ref[4].get("phases_s"),
        "dprune_wall_s": round(dp[1], 3), "dprune_walls": [round(w, 3) for w in dp[2]], "dprune_rss_mb": round(dp[3]),
        "dprune_phases_s": {k: round(v, 3) for k, v in dp[4]["seconds"].items()},
        "speed_ratio_ref_over_dprune": round(ref[1] / dp[1], 2),
        "select_phase_ratio_ref_over_dprune": phase_ratio(ref[4], dp[4]),
        "knn_phase_ratio_ref_over_dprune": round(ref[4]["phases_s"]["knn"] / dp[4]["seconds"]["knn"], 2),
        **compare(ref[0], dp[0]),
    }


def phase_ratio(ref_json, dp_report):
    """Selection only (graph given): the reference's `select` phase over dprune's."""
    return round(ref_json["phases_s"]["select"] / max(dp_report["seconds"]["select"], 1e-6), 2)


def case_ideal(args, data, res):
    ref = median_runs(lambda: run_ref(args, data, "ref_ideal.py", "ref_ideal", ["--k", "10"]), args.repeats)
    out = {"ref_wall_s": round(ref[1], 3), "ref_walls": [round(w, 3) for w in ref[2]], "ref_rss_mb": round(ref[3]),
           "ref_phases_s": ref[4].get("phases_s"), "ref_influence_eval": ref[4].get("influence_eval")}
    for label, extra in [("default_R100_greedy", []),
                         ("ref_settings_R10_index0", ["--ideal-realisations", "10", "--ideal-first", "index0"])]:
        dp = median_runs(lambda: run_dprune(args, data, "ideal", f"dp_ideal_{label}", ["--ideal-k", "10", *extra]),
                         args.repeats)
        out[label] = {
            "dprune_wall_s": round(dp[1], 3), "dprune_walls": [round(w, 3) for w in dp[2]],
            "dprune_rss_mb": round(dp[3]),
            "dprune_phases_s": {k: round(v, 3) for k, v in dp[4]["seconds"].items()},
            "dprune_spread_own_realisations": dp[4]["ideal_spread"],
            "speed_ratio_ref_over_dprune": round(ref[1] / dp[1], 2),
            "select_phase_ratio_ref_over_dprune": phase_ratio(ref[4], dp[4]),
            "selected_ids": dp[0],
            "first_id_same": ref[0][:1] == dp[0][:1],
            **compare(ref[0], dp[0]),
        }
    # Scored after every timed run: forking the benchmark process while it holds the
    # reference graph would inflate the children's peak RSS (ru_maxrss counts pre-exec pages).
    for label in ("default_R100_greedy", "ref_settings_R10_index0"):
        out[label]["influence_eval_ref_estimator"] = influence_eval(args, data, out[label].pop("selected_ids"))
    res["ideal"] = out


_CACHE = {}


def influence_eval(args, data, selected_ids):
    """Spread of a selection on 100 fresh live-edge samples of the reference's own graph,
    computed with ref_ideal.py's functions: the number ref_ideal reports as
    influence_eval, so selections of both tools are scored the same way."""
    sys.path.insert(0, args.shared)
    import numpy as np
    import ref_ideal
    from _common import read_shards
    from _knn import compute_knn

    if "graph" not in _CACHE:
        ids, X, _ = read_shards(data, "embedding", "id")
        nb, sm, _ = compute_knn(X, 10, "exact", center=True, threads=args.threads)
        _CACHE["graph"] = (ids, ref_ideal.build_graph(nb, sm))
    ids, (src, dst, w, _) = _CACHE["graph"]
    pos = {int(i): r for r, i in enumerate(ids.tolist())}
    sel = [pos[i] for i in selected_ids]
    return ref_ideal.eval_spread(len(ids), src, dst, w, sel, 100, 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/dprune-annotate-bench", help="folder for the generated pool")
    p.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "bench"), help="../shared/bench")
    p.add_argument("--dprune", default=None, help="dprune binary [default: $CARGO_TARGET_DIR or target/release]")
    p.add_argument("--n", type=int, default=20000, help="pool rows")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="runs per tool; the median wall time is reported")
    p.add_argument("--cases", default="votek,ideal")
    p.add_argument("--out", default=None, help="also write the results JSON here")
    args = p.parse_args()
    if args.dprune is None:
        tdir = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        args.dprune = os.path.join(tdir, "release", "dprune")
    if not os.path.exists(args.dprune):
        sys.exit(f"no dprune binary at {args.dprune}; run cargo build --release --bin dprune")
    args.shared = os.path.abspath(args.shared)
    args.work = os.path.join(args.data, "work")
    os.makedirs(args.work, exist_ok=True)
    data = ensure_data(args)
    res = {"n": args.n, "dim": 384, "budget": args.budget, "threads": args.threads,
           "loadavg_1m_start": round(os.getloadavg()[0], 2), "dprune": args.dprune}
    cases = {"votek": case_votek, "ideal": case_ideal}
    for c in args.cases.split(","):
        print(f"running {c} ...", file=sys.stderr)
        cases[c](args, data, res)
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
