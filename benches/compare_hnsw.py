#!/usr/bin/env python3
"""Side-by-side benchmark of dprune's HNSW kNN graph against hnswlib (issue 5):
../shared/bench/bench_hnsw.py and examples/hnsw_graph.rs on the same rows, with the same
M / ef_construction / query ef and thread count, on the same machine, in the same run.

Both sides index every row (mean-centred then L2-normalised, as `dprune annotate` and
`bench_hnsw.py --center` do) and query every row for its k + 1 nearest, self removed.
Prints each side's build and query wall time, the ratio (hnswlib time / dprune time; > 1
means dprune is faster), each process's CPU seconds, and both recalls@k measured here
against the same exact search (faiss IndexFlatIP) on the same sample of rows.

    pip install faiss-cpu pyarrow numpy hnswlib
    cargo build --release --example hnsw_graph
    python benches/compare_hnsw.py --data /tmp/hnsw_data --n 50000      # iterate
    python benches/compare_hnsw.py --data /tmp/hnsw_data --n 200000     # issue 5 target

Data (made with ../shared/bench/gen_data.py if missing): --n N --dim 384 --concepts 1000.
The machine may be shared: the load average before and after each side is printed, and
--reps R alternates the two sides R times (median reported).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(cmd, env):
    """Runs cmd; returns (stdout, wall s)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-3000:]}")
    return out, wall


def child_cpu():
    r = os.times()
    return r.children_user + r.children_system


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def env_threads(n):
    e = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        e[v] = str(n)
    return e


def ensure_data(args):
    d = os.path.join(args.data, f"{args.n // 1000}k")
    if not glob.glob(os.path.join(d, "*.parquet")):
        print(f"generating {args.n} x 384 in {d} ...", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(args.shared, "gen_data.py"), "--n", str(args.n), "--dim", "384",
                        "--concepts", "1000", "--shards", "1", "--out", d], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(d, "*.parquet")


def load_rows(pattern):
    """The rows as bench_hnsw.py prepares them with --center: f32, mean-centred, normalised."""
    import numpy as np
    import pyarrow.parquet as pq
    parts = []
    for f in sorted(glob.glob(pattern)):
        col = pq.read_table(f, columns=["embedding"]).column("embedding").combine_chunks()
        parts.append(col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1))
    X = np.concatenate(parts).astype(np.float32)
    X -= X.mean(axis=0, keepdims=True)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def recall(nbrs, truth, sample, k):
    hits = sum(len(set(truth[r]) & set(nbrs[q].tolist())) for r, q in enumerate(sample))
    return hits / (len(sample) * k)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/hnsw_data", help="folder holding <n/1000>k/*.parquet (made if missing)")
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "bench"))
    p.add_argument("--bin", default=None, help="hnsw_graph example [target/release/examples/hnsw_graph]")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=int, default=100, help="query ef, both sides (dprune's default ef_search)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recall-sample", type=int, default=2000)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--only", choices=["dprune", "hnswlib"], help="run one side only")
    args = p.parse_args()
    import faiss
    import numpy as np

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = args.bin or os.path.join(target, "release", "examples", "hnsw_graph")
    if args.only != "hnswlib" and not os.path.exists(binary):
        sys.exit(f"{binary} missing: cargo build --release --example hnsw_graph")
    pattern = ensure_data(args)
    X = load_rows(pattern)
    n, d = X.shape
    k = args.k
    rng = np.random.default_rng(0)
    sample = rng.choice(n, size=min(args.recall_sample, n), replace=False)
    flat = faiss.IndexFlatIP(d)
    flat.add(X)
    _, I = flat.search(X[sample], k + 1)
    truth = [[j for j in I[r] if j != q][:k] for r, q in enumerate(sample)]
    env = env_threads(args.threads)
    runs = {"dprune": [], "hnswlib": []}
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = os.path.join(tmp, "rows.f32")
        X.tofile(rows_path)
        for rep in range(args.reps):
            order = ["hnswlib", "dprune"] if rep % 2 == 0 else ["dprune", "hnswlib"]
            for side in order:
                if args.only and side != args.only:
                    continue
                load0 = os.getloadavg()[0]
                cpu0 = child_cpu()
                if side == "hnswlib":
                    graph = os.path.join(tmp, "hnswlib.npz")
                    out, wall = timed([sys.executable, os.path.join(args.shared, "bench_hnsw.py"), pattern,
                                       "--k", str(k), "--M", str(args.M), "--ef-construction",
                                       str(args.ef_construction), "--ef", str(args.ef), "--center",
                                       "--threads", str(args.threads), "--recall-sample", "0",
                                       "--save-graph", graph], env)
                    j = last_json(out)
                    z = np.load(graph)
                    pos = {int(v): i for i, v in enumerate(z["ids"])}
                    nbrs = np.vectorize(pos.__getitem__)(z["nbrs"])
                else:
                    ids = os.path.join(tmp, "dprune.u32")
                    out, wall = timed([binary, rows_path, str(d), str(k), str(args.M), str(args.ef_construction),
                                       str(args.ef), str(args.threads), ids], env)
                    j = last_json(out)
                    nbrs = np.fromfile(ids, dtype=np.uint32).reshape(n, k)
                rec = dict(build_s=j["build_s"], query_s=j["query_s"], wall_s=round(wall, 2),
                           cpu_s=round(child_cpu() - cpu0, 2), recall=round(recall(nbrs, truth, sample, k), 5),
                           load=(round(load0, 2), round(os.getloadavg()[0], 2)))
                runs[side].append(rec)
                print(side, json.dumps(rec), file=sys.stderr)

    def med(side, key):
        v = [r[key] for r in runs[side]]
        return statistics.median(v) if v else None

    print(f"\nHNSW kNN graph, {n} x {d}, k {k}, M {args.M}, ef_construction {args.ef_construction}, "
          f"ef {args.ef}, {args.threads} threads, {args.reps} rep(s), recall@{k} on {len(sample)} rows")
    print("| | build s | query s | build + query s | process CPU s | recall |")
    print("|---|---|---|---|---|---|")
    for side in ("hnswlib", "dprune"):
        if runs[side]:
            b, q = med(side, "build_s"), med(side, "query_s")
            print(f"| {side} | {b:.1f} | {q:.1f} | {b + q:.1f} | {med(side, 'cpu_s'):.1f} | {med(side, 'recall'):.4f} |")
    summary = dict(n=n, d=d, k=k, M=args.M, ef_construction=args.ef_construction, ef=args.ef, threads=args.threads,
                   runs=runs)
    if runs["hnswlib"] and runs["dprune"]:
        rb = med("hnswlib", "build_s") / med("dprune", "build_s")
        rt = (med("hnswlib", "build_s") + med("hnswlib", "query_s")) / (med("dprune", "build_s") + med("dprune", "query_s"))
        print(f"ratio hnswlib / dprune: build {rb:.2f}x, build + query {rt:.2f}x (> 1: dprune faster)")
        summary.update(build_ratio=round(rb, 3), total_ratio=round(rt, 3))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
