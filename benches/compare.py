#!/usr/bin/env python3
"""Side-by-side benchmark of dprune against the Python references in ../shared/bench.

Runs both tools on the same data, on the same machine, in the same run, and prints
speed as a ratio (reference time / dprune time; > 1 means dprune is faster) and
selections as set overlap. Every process's wall time and peak RSS are measured here
(os.wait4), the same way for both sides.

    pip install faiss-cpu scikit-learn pyarrow numpy hnswlib
    cargo build --release
    python benches/compare.py --data /tmp/dpb            # all cases
    python benches/compare.py --data /tmp/dpb --cases kmeans
    python benches/compare.py --data /tmp/dpb --cases e2e,semdedup --repeats 3   # medians of 3 rounds

The reference gets its best BLAS kernel: the JSON's machine.reference_blas names the kernel
each OpenBLAS in its process picked. faiss-cpu bundles OpenBLAS 0.3.15, which does not know
CPUs newer than it (e.g. Xeon Emerald Rapids) and falls back to its generic "Prescott"
kernel, 3-4x slower; the script warns, and OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell
(AVX2) fixes it.

Data (made with ../shared/bench/gen_data.py if missing):
  200k: --n 200000 --dim 384 --concepts 1000 --shards 4   (k-means fit)
  1m:   --n 1000000 --dim 384 --concepts 1000 --shards 4  (end-to-end filter --keep 0.3)
  2m:   --n 2000000 --dim 384 --concepts 1000 --shards 8  (peak memory of filter; SQL vs native: case sql;
        distributed vs local: case cluster)
  1m5:  --n 1000000 --dim 384 --concepts 1000 --shards 4 --dup-frac 0.05
        (SemDeDup vs ref_semdedup.py and DBP vs ref_dbp.py: cases semdedup, dbp)
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATASETS = {"200k": (200_000, 4), "1m": (1_000_000, 4), "2m": (2_000_000, 8), "1m5": (1_000_000, 4)}
EXTRA_GEN = {"1m5": ["--dup-frac", "0.05"]}


def run(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, peak RSS MiB). Raises on failure."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return out, wall


# Forks and waits for the measured command from a fresh, small interpreter. Linux carries a
# process's peak RSS over from the memory image it was forked from (ru_maxrss survives
# execve), so a command forked straight from this script, which holds hundreds of MB after
# the SemDeDup metrics, would report this script's peak instead of its own.
RSS_WRAPPER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([ru.ru_maxrss, ru.ru_utime + ru.ru_stime], f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_rss(cmd, env=None):
    """Like run() but also returns the command's own peak RSS in MiB and its CPU seconds
    (user + system, os.wait4 in RSS_WRAPPER). CPU seconds compare fairly when the machine
    is shared: wall time then depends on what else runs."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = os.path.join(tmp, "rusage.json")
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, stats] + cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env, text=True)
        out = p.stdout.read()
        p.wait()
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"command failed: {' '.join(cmd)}")
        with open(stats) as f:
            maxrss_kib, cpu = json.load(f)
    return out, wall, maxrss_kib / 1024.0, cpu


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def timed_rounds(args, ref_cmd, ref_env, variants, run_variant):
    """--repeats rounds of: the reference once, then every dprune variant (ABBA, ab_runs).
    Interleaving the rounds lets a drift in the machine's speed (this week's VM moved the
    reference by 10% from one run to the next) touch both sides alike. Returns the
    reference's (stdout of the last run, median wall, peak RSS, median CPU, all walls) and
    per label the list of run_variant(label, binary, extra) results, each (wall, cpu, rss, x)."""
    ref_walls, ref_cpus, ref_rss, ref_out = [], [], 0.0, ""
    runs = {}
    for _ in range(args.repeats):
        ref_out, w, rss, cpu = run_rss(ref_cmd, ref_env)
        ref_walls.append(w)
        ref_cpus.append(cpu)
        ref_rss = max(ref_rss, rss)
        for label, binary, extra in ab_runs(args, variants):
            runs.setdefault(label, []).append(run_variant(label, binary, extra))
    return (ref_out, median(ref_walls), ref_rss, median(ref_cpus), ref_walls), runs


def summary(rs, ref_wall, ref_cpu):
    """Median wall and CPU of a variant's runs, every wall, and the ratios of the medians."""
    wall, cpu = median([r[0] for r in rs]), median([r[1] for r in rs])
    return {"wall_s": round(wall, 2), "walls_s": [round(r[0], 2) for r in rs], "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(max(r[2] for r in rs)), "ratio_ref_over_dprune": round(ref_wall / wall, 2),
            "cpu_ratio_ref_over_dprune": round(ref_cpu / cpu, 2)}


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def ensure_data(args, name):
    n, shards = DATASETS[name]
    d = os.path.join(args.data, name)
    if not glob.glob(os.path.join(d, "*.parquet")):
        print(f"generating {name} ...", file=sys.stderr)
        run([sys.executable, os.path.join(args.shared, "gen_data.py"), "--n", str(n), "--dim", "384",
             "--concepts", "1000", "--shards", str(shards), "--out", d] + EXTRA_GEN.get(name, []))
    return os.path.join(d, "*.parquet")


def env_threads(n):
    e = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        e[v] = str(n)
    return e


def case_kmeans(args, res):
    """k-means fit, 200k x 384, k = 1000, exactly 20 iterations, spherical, 2 threads."""
    data = ensure_data(args, "200k")
    env = env_threads(args.threads)
    ref_out, ref_wall = run([sys.executable, os.path.join(args.shared, "ref_kmeans.py"), data, "--impl", "faiss",
                             "--spherical", "--k", "1000", "--niter", "20", "--threads", str(args.threads)], env)
    ref = last_json(ref_out)["results"][0]
    out, wall = run([args.dprune, "filter", data, "-o", os.path.join(args.work, "km"), "--dry-run", "--quiet",
                     "--k", "1000", "--sample", "200000", "--max-iters", "20", "--tolerance", "0",
                     "--threads", str(args.threads)])
    rep = json.loads(out)
    km = rep["kmeans"]
    before = {}
    if args.before:
        out_b, _ = run([args.before] + [a for a in [
            "filter", data, "-o", os.path.join(args.work, "km"), "--dry-run", "--quiet", "--k", "1000",
            "--sample", "200000", "--max-iters", "20", "--tolerance", "0", "--threads", str(args.threads)]])
        rb = json.loads(out_b)
        before = {"before_fit_s": rb["timings_s"]["kmeans"],
                  "before_ratio_faiss_over_dprune": round(ref["fit_s"] / rb["timings_s"]["kmeans"], 2),
                  "before_inertia": rb["kmeans"]["inertia"]}
    res["kmeans_200k_k1000_20it"] = {**before,
        "faiss_fit_s": ref["fit_s"], "dprune_fit_s": rep["timings_s"]["kmeans"],
        "ratio_faiss_over_dprune": round(ref["fit_s"] / rep["timings_s"]["kmeans"], 2),
        "faiss_mean_cos": ref["mean_cos"], "dprune_iterations": km["iterations"],
        "dprune_inertia": km["inertia"], "faiss_inertia_l2": ref["inertia_l2"],
    }


def ids_of(data_glob):
    import pyarrow.parquet as pq
    return {f: pq.read_table(f, columns=["id"]).column("id").to_numpy() for f in sorted(glob.glob(data_glob))}


def ab_runs(args, variants):
    """(label, binary, extra flags) of each variant's runs: this build's, and with --before the
    other build's right after or right before it, alternating from variant to variant (ABBA).
    Neither build then always takes the first run after the reference, which on some
    machines pays for the memory the reference just freed (e.g. a VM whose free memory the
    host reclaims: the first run's writes to the page cache come out slower)."""
    runs = []
    for i, (label, extra) in enumerate(variants):
        pair = [(label, args.dprune, extra)]
        if args.before:
            pair.append((f"before_{label}", args.before, extra))
            if i % 2:
                pair.reverse()
        runs += pair
    return runs


def case_e2e(args, res):
    """filter --keep 0.3 on 1M x 384 in 4 shards vs ref_ssl_proto.py; then the kept sets with shared centroids."""
    import numpy as np
    import pyarrow.parquet as pq

    data = ensure_data(args, "1m")
    env = env_threads(args.threads)
    cents = os.path.join(args.work, "ref_centroids.npy")
    ref_kept = os.path.join(args.work, "ref_kept.txt")
    ref_cmd = [sys.executable, os.path.join(args.shared, "ref_ssl_proto.py"), data, "--k", "1000", "--niter", "20",
               "--keep", "0.3", "--threads", str(args.threads), "--save-centroids", cents, "--out", ref_kept]
    # default: dprune's defaults (stops at --tolerance); 20it: exactly 20 iterations like faiss;
    # scores_only: like-for-like output with the reference (ids/scores, no pruned Parquet).
    variants = [("default", []), ("20it", ["--tolerance", "0"]), ("scores_only", ["--scores-only"])]

    def one(label, binary, extra):
        out_dir = os.path.join(args.work, f"e2e_{label}")
        _, wall, rss, cpu = run_rss([binary, "filter", "--keep", "0.3", data, "-o", out_dir, "--overwrite", "--quiet",
                                     "--k", "1000", "--max-iters", "20", "--threads", str(args.threads)] + extra)
        return wall, cpu, rss, json.load(open(os.path.join(out_dir, "_dprune_report.json")))

    (_, ref_wall, ref_rss, ref_cpu, ref_walls), runs = timed_rounds(args, ref_cmd, env, variants, one)
    rows = {}
    for label, rs in runs.items():
        rep = rs[-1][3]
        rows[label] = {**summary(rs, ref_wall, ref_cpu), "kmeans_iterations": rep["kmeans"]["iterations"],
                       "n_kept": rep["n_kept"], "timings_s": rep["timings_s"]}
    if args.before:
        # Before and after must agree bit for bit: same clusters, scores and kept rows.
        a = pq.read_table(os.path.join(args.work, "e2e_scores_only", "scores.parquet"))
        b = pq.read_table(os.path.join(args.work, "e2e_before_scores_only", "scores.parquet"))
        rows["scores_only_identical_to_before"] = a.equals(b)
    # Same centroids: kept sets must agree.
    out_dir = os.path.join(args.work, "e2e_same_centroids")
    _, wall_c = run([args.dprune, "filter", "--keep", "0.3", data, "-o", out_dir, "--overwrite", "--quiet",
                     "--centroids", cents, "--scores-only", "--threads", str(args.threads)])
    t = pq.read_table(os.path.join(out_dir, "scores.parquet"), columns=["file", "row", "kept"])
    ids = ids_of(data)
    files = t.column("file").to_pylist()
    row = t.column("row").to_numpy()
    kept = t.column("kept").to_numpy(zero_copy_only=False)
    dp = set()
    for f in ids:
        m = np.array([x == f for x in files]) & kept
        dp.update(ids[f][row[m]].tolist())
    ref = set(np.loadtxt(ref_kept, dtype=np.int64).tolist())
    inter = len(dp & ref)
    res["e2e_1m_keep0.3_k1000"] = {
        "ref_wall_s": round(ref_wall, 2), "ref_walls_s": [round(w, 2) for w in ref_walls],
        "ref_cpu_s": round(ref_cpu, 2), "ref_peak_rss_mb": round(ref_rss), "dprune": rows,
        "same_centroids": {"dprune_wall_s": round(wall_c, 2), "kept_ref": len(ref), "kept_dprune": len(dp),
                           "overlap": inter, "jaccard": round(inter / len(dp | ref), 6), "identical": dp == ref},
    }


def dprune_kept_ids(out_dir, data):
    """Ids of the rows a --scores-only run kept, in input order, and the kept mask."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(os.path.join(out_dir, "scores.parquet"), columns=["kept"])
    ids = np.concatenate(list(ids_of(data).values()))
    kept = t.column("kept").to_numpy(zero_copy_only=False)
    return ids, kept


def case_semdedup(args, res):
    """SemDeDup at eps 0.05 on 1M x 384 with 5% planted near-duplicates vs ref_semdedup.py:
    wall time and peak RSS of both (each fits its own k-means, k = 1000, 20 iterations),
    precision/recall against the planted groups (the reference's own metric), and the kept
    sets when both are given the same centroids, and the same cluster assignment."""
    import numpy as np
    import pyarrow.parquet as pq

    sys.path.insert(0, args.shared)
    from _common import dedup_metrics

    data = ensure_data(args, "1m5")
    env = env_threads(args.threads)
    cents = os.path.join(args.work, "sd_ref_centroids.npy")
    ref_kept = os.path.join(args.work, "sd_ref_kept.txt")
    ref_cmd = [sys.executable, os.path.join(args.shared, "ref_semdedup.py"), data, "--k", "1000", "--niter", "20",
               "--eps", "0.05", "--threads", str(args.threads), "--save-centroids", cents, "--out", ref_kept]
    variants = [("default", []), ("20it", ["--tolerance", "0"]), ("global", ["--dedup-global"])]

    def one(label, binary, extra):
        out_dir = os.path.join(args.work, f"sd_{label}")
        _, wall, rss, cpu = run_rss([binary, "filter", "--dedup", "0.05", data, "-o", out_dir, "--overwrite",
                                     "--quiet", "--k", "1000", "--max-iters", "20", "--scores-only",
                                     "--threads", str(args.threads)] + extra)
        return wall, cpu, rss, json.load(open(os.path.join(out_dir, "_dprune_report.json")))

    (ref_out, ref_wall, ref_rss, ref_cpu, ref_walls), runs = timed_rounds(args, ref_cmd, env, variants, one)
    ref = last_json(ref_out)
    truth = {f: pq.read_table(f, columns=["dup_of"]).column("dup_of").to_numpy() for f in sorted(glob.glob(data))}
    dup_of = np.concatenate(list(truth.values()))
    rows = {}
    for label, rs in runs.items():
        rep = rs[-1][3]
        # Outputs are deterministic: the last run's stand for every run's.
        ids, kept = dprune_kept_ids(os.path.join(args.work, f"sd_{label}"), data)
        m = dedup_metrics(ids, dup_of, ~kept)
        rows[label] = {**summary(rs, ref_wall, ref_cpu), "n_kept": rep["n_kept"], "precision": m["precision"],
                       "recall": m["recall"], "timings_s": rep["timings_s"],
                       "spill_partitions": rep["semdedup"]["partitions"]}
    if args.before:
        for label, _ in variants:
            a = pq.read_table(os.path.join(args.work, f"sd_{label}", "scores.parquet"))
            b = pq.read_table(os.path.join(args.work, f"sd_before_{label}", "scores.parquet"))
            rows[f"{label}_identical_to_before"] = a.equals(b)
    out_dir = os.path.join(args.work, "sd_same_centroids")
    _, wall_c = run([args.dprune, "filter", "--dedup", "0.05", data, "-o", out_dir, "--overwrite", "--quiet",
                     "--centroids", cents, "--scores-only", "--threads", str(args.threads)])
    ids, kept = dprune_kept_ids(out_dir, data)
    dp = set(ids[kept].tolist())
    refset = set(np.loadtxt(ref_kept, dtype=np.int64).tolist())
    inter = len(dp & refset)
    # Same cluster assignment: the reference's own labels under those centroids (a second,
    # untimed reference run writes them), given to dprune with --assignments.
    ref_scores = os.path.join(args.work, "sd_ref_scores.parquet")
    ref_kept2 = os.path.join(args.work, "sd_ref_kept_assigned.txt")
    run([sys.executable, os.path.join(args.shared, "ref_semdedup.py"), data, "--centroids", cents, "--eps", "0.05",
         "--threads", str(args.threads), "--scores-out", ref_scores, "--out", ref_kept2], env)
    st = pq.read_table(ref_scores, columns=["id", "cluster"])
    cluster_of = dict(zip(st.column("id").to_numpy().tolist(), st.column("cluster").to_numpy().tolist()))
    labels = os.path.join(args.work, "sd_ref_labels.npy")
    np.save(labels, np.array([cluster_of[i] for i in ids.tolist()], dtype=np.int64))
    out_dir = os.path.join(args.work, "sd_same_assignment")
    run([args.dprune, "filter", "--dedup", "0.05", data, "-o", out_dir, "--overwrite", "--quiet",
         "--centroids", cents, "--assignments", labels, "--scores-only", "--threads", str(args.threads)])
    ids2, kept2 = dprune_kept_ids(out_dir, data)
    dp2 = set(ids2[kept2].tolist())
    refset2 = set(np.loadtxt(ref_kept2, dtype=np.int64).tolist())
    res["semdedup_1m_eps0.05_k1000"] = {
        "ref_wall_s": round(ref_wall, 2), "ref_walls_s": [round(w, 2) for w in ref_walls],
        "ref_cpu_s": round(ref_cpu, 2), "ref_peak_rss_mb": round(ref_rss),
        "ref_precision": ref["per_eps"][0].get("precision"), "ref_recall": ref["per_eps"][0].get("recall"),
        "ref_phases_s": ref.get("phases_s"), "dprune": rows,
        "same_centroids": {"dprune_wall_s": round(wall_c, 2), "kept_ref": len(refset), "kept_dprune": len(dp),
                           "overlap": inter, "symmetric_difference": len(dp ^ refset), "identical": dp == refset},
        "same_assignment": {"kept_ref": len(refset2), "kept_dprune": len(dp2),
                            "symmetric_difference": len(dp2 ^ refset2), "identical": dp2 == refset2},
    }


def case_dbp(args, res):
    """DBP --keep 0.5 on the 1m5 data vs ref_dbp.py: wall time and peak RSS (each fits its own
    k-means), then per-cluster quotas with the reference's centroids (within +-1 of its rint)."""
    import numpy as np
    import pyarrow.parquet as pq

    data = ensure_data(args, "1m5")
    env = env_threads(args.threads)
    cents = os.path.join(args.work, "dbp_ref_centroids.npy")
    quotas = os.path.join(args.work, "dbp_ref_quotas.parquet")
    ref_out, ref_wall, ref_rss, ref_cpu = run_rss([sys.executable, os.path.join(args.shared, "ref_dbp.py"), data, "--k", "1000",
                                          "--niter", "20", "--keep", "0.5", "--threads", str(args.threads),
                                          "--save-centroids", cents, "--quotas-out", quotas], env)
    out_dir = os.path.join(args.work, "dbp_own")
    _, wall, rss, cpu = run_rss([args.dprune, "filter", "--metric", "dbp", "--keep", "0.5", data, "-o", out_dir,
                            "--overwrite", "--quiet", "--k", "1000", "--max-iters", "20", "--scores-only",
                            "--threads", str(args.threads)])
    out_c = os.path.join(args.work, "dbp_same_centroids")
    _, wall_c, rss_c, _ = run_rss([args.dprune, "filter", "--metric", "dbp", "--keep", "0.5", data, "-o", out_c,
                                "--overwrite", "--quiet", "--centroids", cents, "--scores-only",
                                "--threads", str(args.threads)])
    rep = json.load(open(os.path.join(out_c, "_dprune_report.json")))
    q = pq.read_table(quotas, columns=["cluster", "quota"])
    order = np.argsort(q.column("cluster").to_numpy())
    ours = np.array([c["quota"] for c in rep["clusters"]], dtype=np.int64)
    theirs = q.column("quota").to_numpy()[order].astype(np.int64)
    diff = np.abs(ours - theirs)
    res["dbp_1m_keep0.5_k1000"] = {
        "ref_wall_s": round(ref_wall, 2), "ref_cpu_s": round(ref_cpu, 2), "ref_peak_rss_mb": round(ref_rss),
        "ref_kept": int(theirs.sum()),
        "dprune_wall_s": round(wall, 2), "dprune_cpu_s": round(cpu, 2), "dprune_peak_rss_mb": round(rss),
        "ratio_ref_over_dprune": round(ref_wall / wall, 2), "cpu_ratio_ref_over_dprune": round(ref_cpu / cpu, 2),
        "same_centroids": {"dprune_wall_s": round(wall_c, 2), "dprune_peak_rss_mb": round(rss_c),
                           "dprune_kept": int(ours.sum()), "max_abs_quota_diff": int(diff.max()),
                           "clusters_differing": int((diff > 0).sum()), "clusters": int(len(ours))},
    }


def case_memory(args, res):
    """Peak RSS of filter --keep 0.3 on 2M x 384 (8 shards, ~3 GiB of embeddings)."""
    data = ensure_data(args, "2m")
    out_dir = os.path.join(args.work, "mem")
    _, wall, rss, cpu = run_rss([args.dprune, "filter", "--keep", "0.3", data, "-o", out_dir, "--overwrite", "--quiet",
                            "--k", "1000", "--threads", str(args.threads)])
    size = sum(os.path.getsize(f) for f in glob.glob(data))
    res["memory_2m_keep0.3"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss),
                                "input_gib": round(size / 2**30, 2), "target_mb": 1024}


SQL_PRUNE = """
WITH s AS (SELECT id, dprune_nearest(embedding)['distance'] AS d FROM t),
     r AS (SELECT id, row_number() OVER (ORDER BY d DESC, id) AS rk FROM s)
SELECT * FROM t WHERE id IN (SELECT id FROM r WHERE rk <= (SELECT (COUNT(*) * 3) / 10 FROM t))
"""


def case_sql(args, res):
    """Issue 7: the same prune (keep 30%, hardest by prototypicality, given centroids) on
    2M x 384 natively (`filter --centroids`), through `filter --engine sql` (the DataFusion
    plans `--cluster` runs: dprune's embedding scan, `dprune_nearest`, row_number() windows,
    a write plan) and as a hand-written query (`dprune sql`, SQL_PRUNE over DataFusion's own
    Parquet scan: scores and ranks on (id, distance) only, then one semi-join pass writes the
    kept rows with every column). All write the kept rows; wall time, CPU, peak RSS and the
    kept ids compared.
    Needs a dprune built with the default `datafusion` feature."""
    import numpy as np
    import pyarrow.parquet as pq

    data = ensure_data(args, "2m")
    cents = os.path.join(args.work, "sql_centroids.npy")
    fit_dir = os.path.join(args.work, "sql_fit")
    run([args.dprune, "filter", "--keep", "0.3", data, "-o", fit_dir, "--overwrite", "--quiet", "--k", "1000",
         "--scores-only", "--save-centroids", cents, "--threads", str(args.threads)])
    native_dir = os.path.join(args.work, "sql_native")
    _, nwall, nrss, ncpu = run_rss([args.dprune, "filter", "--keep", "0.3", data, "-o", native_dir, "--overwrite",
                                    "--quiet", "--centroids", cents, "--threads", str(args.threads)])
    engine_dir = os.path.join(args.work, "sql_engine")
    _, ewall, erss, ecpu = run_rss([args.dprune, "filter", "--engine", "sql", "--keep", "0.3", data, "-o", engine_dir,
                                    "--overwrite", "--quiet", "--centroids", cents, "--threads", str(args.threads)])
    sql_out = os.path.join(args.work, "sql_kept.parquet")
    if os.path.exists(sql_out):
        os.remove(sql_out)
    _, swall, srss, scpu = run_rss([args.dprune, "sql", "--table", f"t={data}", "--centroids", cents, "-o", sql_out,
                                    "--threads", str(args.threads), SQL_PRUNE])
    native_ids = np.concatenate([pq.read_table(f, columns=["id"]).column("id").to_numpy()
                                 for f in sorted(glob.glob(os.path.join(native_dir, "*.parquet")))])
    engine_ids = np.concatenate([pq.read_table(f, columns=["id"]).column("id").to_numpy()
                                 for f in sorted(glob.glob(os.path.join(engine_dir, "*.parquet")))])
    sql_ids = pq.read_table(sql_out, columns=["id"]).column("id").to_numpy()
    a, b, e = set(native_ids.tolist()), set(sql_ids.tolist()), set(engine_ids.tolist())
    res["sql_vs_native_2m_keep0.3"] = {
        "native": {"wall_s": round(nwall, 2), "cpu_s": round(ncpu, 2), "peak_rss_mb": round(nrss), "kept": len(a)},
        "engine_sql": {"wall_s": round(ewall, 2), "cpu_s": round(ecpu, 2), "peak_rss_mb": round(erss),
                       "kept": len(e)},
        "sql": {"wall_s": round(swall, 2), "cpu_s": round(scpu, 2), "peak_rss_mb": round(srss), "kept": len(b)},
        "engine_sql_over_native_wall": round(ewall / nwall, 3),
        "engine_sql_identical": a == e,
        "sql_over_native_wall": round(swall / nwall, 3), "symmetric_difference": len(a ^ b), "identical": a == b,
    }


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_cluster(args, res):
    """Issue 7: the overhead of a distributed run on one machine. The same prune (keep 30%,
    hardest by prototypicality, given centroids) on 2M x 384 locally (`filter --centroids`)
    and on a Ballista cluster of one scheduler and two executors started here
    (`filter --cluster`); kept ids compared. Each executor runs --threads tasks at once, so
    the cluster may use up to twice the local run's cores: compare CPU seconds too.
    Client CPU/RSS are the client's alone (the executors' are not counted)."""
    import numpy as np
    import pyarrow.parquet as pq

    data = ensure_data(args, "2m")
    cents = os.path.join(args.work, "sql_centroids.npy")
    if not os.path.exists(cents):
        run([args.dprune, "filter", "--keep", "0.3", data, "-o", os.path.join(args.work, "sql_fit"), "--overwrite",
             "--quiet", "--k", "1000", "--scores-only", "--save-centroids", cents, "--threads", str(args.threads)])
    local_dir = os.path.join(args.work, "cl_local")
    _, lwall, lrss, lcpu = run_rss([args.dprune, "filter", "--keep", "0.3", data, "-o", local_dir, "--overwrite",
                                    "--quiet", "--centroids", cents, "--threads", str(args.threads)])
    procs = []
    try:
        sched = subprocess.Popen([args.dprune, "cluster", "scheduler", "--bind", "127.0.0.1:0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(sched)
        url = sched.stdout.readline().strip().split()[-1]
        for _ in range(2):
            procs.append(subprocess.Popen(
                [args.dprune, "cluster", "executor", "--scheduler", url, "--flight-port", str(free_port()),
                 "--grpc-port", str(free_port()), "--concurrent-tasks", str(args.threads)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3)
        dist_dir = os.path.join(args.work, "cl_dist")
        _, dwall, drss, dcpu = run_rss([args.dprune, "filter", "--keep", "0.3", data, "-o", dist_dir, "--overwrite",
                                        "--quiet", "--centroids", cents, "--cluster", url])
    finally:
        for p in procs:
            p.kill()
            p.wait()

    def ids(d):
        return set(np.concatenate([pq.read_table(f, columns=["id"]).column("id").to_numpy()
                                   for f in sorted(glob.glob(os.path.join(d, "*.parquet")))]).tolist())

    a, b = ids(local_dir), ids(dist_dir)
    res["cluster_vs_local_2m_keep0.3"] = {
        "local": {"wall_s": round(lwall, 2), "cpu_s": round(lcpu, 2), "peak_rss_mb": round(lrss), "kept": len(a)},
        "cluster_2_executors": {"wall_s": round(dwall, 2), "client_cpu_s": round(dcpu, 2),
                                "client_peak_rss_mb": round(drss), "kept": len(b)},
        "cluster_over_local_wall": round(dwall / lwall, 3), "symmetric_difference": len(a ^ b), "identical": a == b,
    }


def blas_kernels(threads):
    """The kernel every BLAS in the reference's process picked (threadpoolctl), e.g.
    {"libopenblaso...so": "SkylakeX"}. An OpenBLAS older than the CPU (faiss-cpu bundles
    0.3.15) falls back to the generic "Prescott" kernel, several times slower; the
    reference then runs far below its best and every ratio flatters dprune. The fix is
    OPENBLAS_CORETYPE (e.g. SkylakeX or Haswell) in the environment of this script."""
    code = ("import json, numpy, faiss\nfrom threadpoolctl import threadpool_info\n"
            "print(json.dumps({i['filepath'].rsplit('/', 1)[-1]: i.get('architecture')"
            " for i in threadpool_info() if i.get('user_api') == 'blas'}))")
    try:
        out, _ = run([sys.executable, "-c", code], env=env_threads(threads))
        return json.loads(out)
    except (SystemExit, ValueError):
        return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/dpb", help="folder for the generated datasets")
    ap.add_argument("--work", default="/tmp/dpb/work", help="scratch folder for outputs")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--dprune", default=os.path.join(ROOT, "target", "release", "dprune"))
    ap.add_argument("--before", help="a second dprune binary (e.g. main's) timed in the same run, rows prefixed before_")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="kmeans,e2e,memory")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the e2e and semdedup cases (reference, then each variant); medians reported")
    ap.add_argument("--out", help="write the results JSON here")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    res = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
                       "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                       "reference_blas": blas_kernels(args.threads)}}
    generic = [k for k, v in res["machine"]["reference_blas"].items() if v == "Prescott"]
    if generic:
        print(f"warning: {', '.join(generic)} runs its generic Prescott kernel on this CPU, so the "
              "reference is far slower than it can be; set OPENBLAS_CORETYPE=SkylakeX (AVX-512) or "
              "Haswell (AVX2) and run again", file=sys.stderr)
    for c in args.cases.split(","):
        {"kmeans": case_kmeans, "e2e": case_e2e, "memory": case_memory, "semdedup": case_semdedup,
         "dbp": case_dbp, "sql": case_sql, "cluster": case_cluster}[c](args, res)
        print(json.dumps(res, indent=1), file=sys.stderr)
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
