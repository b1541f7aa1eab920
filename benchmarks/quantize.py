r"""Quantization kernels side by side: pqdjax Lloyd vs scikit-learn KMeans (lloyd, elkan) vs ott-jax k_means.

Command (under the machine's CPU lock, from the repository root):
    flock /tmp/pqdjax-cpu.lock python -m benchmarks.quantize [--repeats=5] [--quick] [--shape=0..7] [--tolerance] [--clvq-memory] [--norms] [--hamerly] [--profile] [--cell-sums] [--latent-candidates=WORKDIR]

Each solver starts from the same k-means++ centres and runs the same number of
Lloyd iterations (tolerance 0, the iteration count fixed), so times and
inertias compare like for like. The solvers take turns within each of
--repeats rounds (after one warm-up run each, which compiles). Reported: median
wall time, the median over rounds of each per-round time ratio (the speed-ups),
GFLOP/s counting the distance matmul's 2 N K d flops per iteration (as plain
Lloyd computes them; block bounds skip most of them), and that rate as a
fraction of the machine's measured sgemm rate (numpy/OpenBLAS and XLA, 4096^3).
Shapes:
  * one measure of a Gaussian mixture: N = 50,000, d = 256, K = 100 (pqdjax with
    block bounds, which `uses_block_bounds` picks at this size, and without);
  * ImageNet-like, scaled to this machine: 100 classes x 1,300 latents, d = 1,024,
    K = 10 and 50; pqdjax quantizes all classes in one vmapped call, scikit-learn
    and ott-jax loop over the classes;
  * one measure of standard normal samples (no clusters: the bounds rule out
    little, which measures what they cost when they do not pay), N = 50,000,
    d = 256, K = 100;
  * Stable Diffusion's scale: one class of 1,300 latents of d = 16,384 (4 x 64 x 64),
    K = 10, 50, 100 and 200.
Last, CLVQ's peak memory (streamed mini-batches, in a fresh process per N)
for N = 10^5 and 10^6 samples of dimension 256. --tolerance times only
Lloyd's tolerance (the mean per-feature variance) per class against numpy's,
on 100 x 1,300 x 1,024; --norms only the squared row norms, against one
matrix-vector product per row and numpy; --hamerly only the share of samples
that per-sample (Hamerly) bounds would leave to compute on shapes 0 and 3;
--profile only where one plain pass goes on shape 3; --cell-sums only a pass's cell
sums in each of their three ways; --latent-candidates only the share of the
points that even the tightest block bounds keep as candidates on a finished
run's latents (classes 0 and 5, K = 50 and 100).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ott.tools import k_means as ott_k_means
from sklearn.cluster import KMeans

from benchmarks.timing import interleaved_times
from pqdjax import quantize as q
from pqdjax.quantize.voronoi import nearest, squared_norms

lloyd_module = importlib.import_module("pqdjax.quantize.lloyd")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sgemm_rates(repeats: int) -> dict[str, float]:
    """GFLOP/s of a 4096^3 float32 matmul, numpy (OpenBLAS) and XLA."""
    n = 4096
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(n, n)).astype(np.float32)
    flops = 2 * n**3
    numpy_t = _median_time(lambda: a @ b, repeats)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    xla_t = _median_time(lambda: mm(ja, jb).block_until_ready(), repeats)
    return {"numpy": flops / numpy_t / 1e9, "xla": flops / xla_t / 1e9}


def _blobs(rng, classes, n, d, centers_per_class=20):
    """Gaussian mixtures, so Lloyd has structure to find: [classes, n, d] float32."""
    centers = rng.normal(0, 1, (classes, centers_per_class, d)).astype(np.float32)
    labels = rng.integers(0, centers_per_class, (classes, n))
    x = np.take_along_axis(centers, labels[..., None], axis=1)
    return x + rng.normal(0, 0.5, x.shape).astype(np.float32)


def _normal(rng, classes, n, d):
    """Standard normal samples, no clusters (block bounds rule out little): [classes, n, d] float32."""
    return rng.normal(size=(classes, n, d)).astype(np.float32)


def compare_lloyd(x: np.ndarray, k: int, iterations: int, repeats: int, seed: int = 0) -> dict:
    """x: [C, n, d]. Same k-means++ init, `iterations` Lloyd iterations, per solver, taking turns.

    Solvers: pqdjax `lloyd` as the quantize stage runs it (block bounds where
    `uses_block_bounds` picks them), pqdjax without bounds when that differs,
    scikit-learn KMeans (lloyd, and elkan: its exact bound-based variant) and
    ott-jax k_means.
    """
    classes, n, d = x.shape
    mass = np.full((classes, n), 1.0 / n, np.float32)
    keys = jax.random.split(jax.random.key(seed), classes)
    xj, mj = jnp.asarray(x), jnp.asarray(mass)
    init = jax.jit(jax.vmap(lambda a, m, r: q.kmeans_plus_plus(a, m, k, r)))(xj, mj, keys)
    init_np = np.asarray(init)
    bounded = lloyd_module.uses_block_bounds(n, k, iterations)

    def ours(bounds):
        fn = jax.jit(jax.vmap(lambda a, m, c: q.lloyd(a, m, c, max_iter=iterations, tol=0.0, bounds=bounds)))
        return lambda: jax.block_until_ready(fn(xj, mj, init))

    def sklearn(algorithm):
        return lambda: [KMeans(k, init=init_np[c], n_init=1, max_iter=iterations, tol=0.0, algorithm=algorithm).fit(x[c])
                        for c in range(classes)]

    ott_fn = jax.jit(lambda a, c: ott_k_means.k_means(
        a, k, init=lambda geom, k, rng: c, n_init=1, tol=0.0, min_iterations=iterations, max_iterations=iterations))
    solvers = {"pqdjax": ours(None)}
    if bounded:
        solvers["pqdjax_no_bounds"] = ours(False)
    solvers |= {"sklearn": sklearn("lloyd"), "sklearn_elkan": sklearn("elkan"),
                "ott": lambda: jax.block_until_ready([ott_fn(xj[c], init[c]) for c in range(classes)])}
    results = {name: fn() for name, fn in solvers.items()}
    times = interleaved_times(solvers, repeats)
    seconds = {name: float(np.median(t)) for name, t in times.items()}

    def inertia(name):
        out = results[name]
        if name.startswith("pqdjax"):
            return float(np.sum(np.asarray(out.distortion) * n))
        if name.startswith("sklearn"):
            return float(sum(f.inertia_ for f in out))
        return float(sum(float(o.error) for o in out))

    ours_iters = np.asarray(results["pqdjax"].iterations)
    sk_iters = np.array([f.n_iter_ for f in results["sklearn"]])
    flops = 2.0 * n * k * d * float(ours_iters.sum())
    inertias = {name: inertia(name) for name in solvers}
    per_round = lambda a, b: float(np.median(np.asarray(times[a]) / np.asarray(times[b])))
    return {
        "shape": f"{classes} x {n} x {d}, K={k}",
        "block_bounds": bounded,
        "iterations": {"pqdjax": ours_iters.tolist() if classes <= 4 else float(ours_iters.mean()),
                       "sklearn": sk_iters.tolist() if classes <= 4 else float(sk_iters.mean())},
        "seconds": seconds,
        "gflops": {name: flops / t / 1e9 for name, t in seconds.items()},
        "inertia": inertias,
        "inertia_rel_diff_vs_sklearn": abs(inertias["pqdjax"] - inertias["sklearn"]) / inertias["sklearn"],
        # Median over rounds of the per-round time ratio (robust to the machine's drift).
        "speedup_vs_sklearn": per_round("sklearn", "pqdjax"),
        "speedup_vs_sklearn_elkan": per_round("sklearn_elkan", "pqdjax"),
        "speedup_vs_ott": per_round("ott", "pqdjax"),
    }


def tolerance_cost(classes=100, n=1300, d=1024, repeats=5) -> dict:
    """Per-class time of Lloyd's tolerance (tol * mean per-feature variance) against scikit-learn's.

    pqdjax: `tolerance_threshold` over the classes in one jitted lax.map, with |x|^2
    given (Lloyd's pass computes it anyway) and computed; scikit-learn's KMeans
    computes `tol * np.mean(np.var(x, axis=0))` per fit (here with numpy).
    """
    x = np.random.default_rng(7).normal(size=(classes, n, d)).astype(np.float32)
    xj = jnp.asarray(x)
    mass = jnp.full((classes, n), 1.0 / n, jnp.float32)
    x_sq = jax.jit(jax.vmap(squared_norms))(xj)
    given = jax.jit(lambda a, m, s: jax.lax.map(lambda t: lloyd_module.tolerance_threshold(*t[:2], 1e-4, t[2]), (a, m, s)))
    computed = jax.jit(lambda a, m: jax.lax.map(lambda t: lloyd_module.tolerance_threshold(*t, 1e-4), (a, m)))
    times = interleaved_times({
        "pqdjax, |x|^2 given": lambda: jax.block_until_ready(given(xj, mass, x_sq)),
        "pqdjax": lambda: jax.block_until_ready(computed(xj, mass)),
        "numpy (scikit-learn's formula)": lambda: [1e-4 * np.mean(np.var(x[c], axis=0)) for c in range(classes)],
    }, repeats)
    ours = np.asarray(given(xj, mass, x_sq))
    reference = np.array([1e-4 * np.mean(np.var(x[c].astype(np.float64), axis=0)) for c in range(classes)])
    return {"shape": f"{classes} x {n} x {d}",
            "ms_per_class": {name: 1e3 * float(np.median(t)) / classes for name, t in times.items()},
            "max_rel_diff_vs_float64": float(np.max(np.abs(ours - reference) / reference))}


def norms_cost(repeats=5) -> list[dict]:
    """|x|^2 per row as Lloyd computes it once per measure (pqdjax.quantize.voronoi.squared_norms: long rows in
    pieces of 128), against one matrix-vector product over the whole row (its form for short rows) and numpy."""
    plain = jax.jit(lambda x: jnp.matmul(jnp.square(x), jnp.ones(x.shape[-1], x.dtype), precision=jax.lax.Precision.HIGHEST))
    ours = jax.jit(squared_norms)
    rows = []
    for shape in ((1300, 16_384), (100, 1300, 1024), (50_000, 256)):
        x = np.random.default_rng(8).normal(size=shape).astype(np.float32)
        xj = jnp.asarray(x)
        times = interleaved_times({
            "pqdjax squared_norms": lambda: jax.block_until_ready(ours(xj)),
            "one matrix-vector product per row": lambda: jax.block_until_ready(plain(xj)),
            "numpy einsum": lambda: np.einsum("...d,...d->...", x, x),
        }, repeats)
        reference = np.einsum("...d,...d->...", x.astype(np.float64), x.astype(np.float64))
        rows.append({"shape": " x ".join(map(str, shape)), "ms": {name: 1e3 * float(np.median(t)) for name, t in times.items()},
                     "max_rel_diff_vs_float64": float(np.max(np.abs(np.asarray(ours(xj)) - reference) / reference))})
    return rows


def cell_sums_cost(repeats=5) -> list[dict]:
    """A pass's cell sums as pqdjax.quantize.voronoi.cell_sums chooses them, against each of its three ways forced
    on every shape (the scatter of the weighted rows, the one-hot matmul, the row loop), in ms per pass: 4 passes
    in one jitted loop (as Lloyd reuses its buffers), each adding into the running sums with the cells
    renumbered and the masses scaled by the pass, so that no part of a pass is hoisted out of the loop."""
    voronoi = importlib.import_module("pqdjax.quantize.voronoi")
    hi = jax.lax.Precision.HIGHEST
    ways = {
        "pqdjax cell_sums": voronoi.cell_sums,
        "scatter": lambda x, m, a, into: into + jax.ops.segment_sum(m[:, None] * x, a, num_segments=into.shape[0]),
        "one-hot matmul": lambda x, m, a, into: into + jnp.matmul(
            ((a[:, None] == jnp.arange(into.shape[0])) * m[:, None]).T.astype(x.dtype), x, precision=hi),
        "row loop": voronoi.row_loop_sums,
    }
    rows = []
    for r, d, k in ((4096, 256, 100), (4096, 256, 2), (4096, 512, 100), (1300, 1024, 2), (1300, 1024, 10),
                    (1300, 1024, 50), (1300, 16_384, 10), (1300, 16_384, 100), (1300, 16_384, 200)):
        rng = np.random.default_rng(d + k)
        x, m = jnp.asarray(rng.normal(size=(r, d)).astype(np.float32)), jnp.full(r, 1.0 / r, jnp.float32)
        a = jnp.asarray(rng.integers(0, k, r).astype(np.int32))
        fns = {}
        for way, sums in ways.items():
            run = jax.jit(lambda x, m, a, sums=sums, k=k: jax.lax.fori_loop(
                0, 4, lambda i, acc: sums(x, m * (i + 1).astype(m.dtype), (a + i) % k, acc), jnp.zeros((k, x.shape[1]))))
            fns[way] = lambda run=run: jax.block_until_ready(run(x, m, a))
        times = interleaved_times(fns, repeats)
        rows.append({"shape": f"{r} x {d}, K={k}", "ms_per_pass": {w: 1e3 * float(np.median(t)) / 4 for w, t in times.items()}})
    return rows


def pass_profile(repeats: int = 10) -> dict:
    """Where one plain Lloyd pass goes on the standard normal measure (shape 3: 50,000 x 256, K = 100), in ms:
    the distance matmul as one product, the same per block of BLOCK_ROWS rows with the row minimum, the nearest
    point per block (pqdjax.quantize.voronoi.nearest), and the whole pass (nearest + cell sums and masses)."""
    x = jnp.asarray(_normal(np.random.default_rng(3), 1, 50_000, 256)[0])
    n = len(x)
    points = x[:100]
    blocks = lloyd_module._padded_blocks(x, jnp.full(n, 1.0 / n), lloyd_module.BLOCK_ROWS)
    per_block = lambda f: jax.jit(lambda c: jax.lax.map(lambda b: f(b, c), (blocks[0], blocks[2])))
    parts = {
        "matmul, one product": jax.jit(lambda c: jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)),
        "matmul + row minimum, per block": per_block(lambda b, c: jnp.min(jnp.matmul(b[0], c.T, precision=jax.lax.Precision.HIGHEST), axis=1)),
        "nearest point, per block": per_block(lambda b, c: nearest(b[0], c, b[1])),
        "whole pass": jax.jit(lambda c: lloyd_module._assign_and_accumulate(*blocks, c)),
    }
    times = interleaved_times({name: lambda f=f: jax.block_until_ready(f(points)) for name, f in parts.items()}, repeats)
    return {name: round(1e3 * float(np.median(t)), 1) for name, t in times.items()}


def hamerly_share(iterations: int = 20, seed: int = 0) -> list[dict]:
    """Share of the samples that per-sample bounds (Hamerly 2010) leave needing distances, per Lloyd iteration, on the
    benchmark's two single measures (the Gaussian mixture and the standard normal, shapes 0 and 3: same data, same
    k-means++ start). In float64 with numpy, exact bounds: u_i >= |x_i - c_a(i)| grows by its point's move, l_i <= the
    distance to the second nearest point shrinks by the largest move among the others; a sample is skipped when
    u_i <= max(l_i, s_a / 2) (s_a: the distance from c_a to its nearest other point) before or after
    tightening u_i. What is left is what a per-sample-bounds Lloyd would still compute distances for.
    """
    rows = []
    for index, make in ((0, _blobs), (3, _normal)):
        x = make(np.random.default_rng(index), 1, 50_000, 256)[0].astype(np.float64)
        n, k = len(x), 100
        key = jax.random.split(jax.random.key(seed), 1)[0]  # compare_lloyd's key of its one class
        init = q.kmeans_plus_plus(jnp.asarray(x, jnp.float32), jnp.full(n, 1.0 / n, jnp.float32), k, key)
        centers = np.asarray(init, np.float64)
        distances = lambda a, c: np.sqrt(np.maximum((a * a).sum(1)[:, None] - 2 * a @ c.T + (c * c).sum(1)[None], 0))
        d = distances(x, centers)
        assignment = d.argmin(1)
        two = np.sort(d, axis=1)[:, :2]
        upper, lower = two[:, 0].copy(), two[:, 1].copy()
        shares = []
        for _ in range(iterations):
            moved = np.stack([x[assignment == j].mean(0) if np.any(assignment == j) else centers[j] for j in range(k)])
            step = np.linalg.norm(moved - centers, axis=1)
            centers = moved
            largest, second = np.argsort(step)[-1], np.sort(step)[-2]
            upper += step[assignment]
            lower -= np.where(assignment == largest, second, step[largest])
            between = distances(centers, centers)
            np.fill_diagonal(between, np.inf)
            bound = np.maximum(lower, between.min(1)[assignment] / 2)
            need = upper > bound
            upper[need] = np.linalg.norm(x[need] - centers[assignment[need]], axis=1)  # tightened
            need &= upper > bound
            shares.append(float(need.mean()))
            d = distances(x[need], centers)
            order = np.argsort(d, axis=1)[:, :2]
            assignment[need] = order[:, 0]
            upper[need] = np.take_along_axis(d, order[:, :1], 1)[:, 0]
            lower[need] = np.take_along_axis(d, order[:, 1:], 1)[:, 0]
        rows.append({"data": "Gaussian mixture" if make is _blobs else "standard normal", "n": n, "d": 256, "k": k,
                     "share_per_iteration": [round(v, 3) for v in shares], "mean_share": round(float(np.mean(shares)), 3)})
    return rows


def latent_candidates(workdir: str, classes=(0, 5), ks=(50, 100), iterations: int = 8, block_rows: int = 1024) -> list[dict]:
    """Share of the K points each block of `block_rows` cell-sorted latents keeps as candidates, with the
    tightest block bounds there are (lower[B, k] = min_i |x_i - c_k|, upper[B] = max_i |x_i - c_a(i)|, exact
    distances after `iterations` Lloyd iterations from k-means++): the bounds Lloyd keeps are looser, so
    its candidate sets are at least these."""
    from pqdjax import runs
    from pqdjax.quantize import block_bounds
    from pqdjax.quantize.voronoi import squared_distances
    run = runs.load_run(workdir)
    rows = []
    for c in classes:
        x = jnp.asarray(run.latents[run.labels == c], jnp.float32)
        n = x.shape[0]
        mass = jnp.full((n,), 1.0 / n, jnp.float32)
        for k in ks:
            init = lloyd_module.kmeans_plus_plus(x, mass, k, jax.random.key(0))
            result = q.lloyd(x, mass, init, max_iter=iterations, tol=0.0, bounds=False)
            order = block_bounds.tour_sorted_order(result.assignment, result.points)
            distances = np.sqrt(np.asarray(squared_distances(x[order], result.points)))  # [n, K]
            own = distances[np.arange(n), np.asarray(result.assignment[order])]
            shares = [float(np.mean(distances[s:s + block_rows].min(axis=0) <= own[s:s + block_rows].max()))
                      for s in range(0, n, block_rows)]
            rows.append({"class": c, "n": n, "d": int(x.shape[1]), "k": k, "iterations": int(result.iterations),
                         "candidate_share_min": min(shares), "candidate_share_mean": float(np.mean(shares)),
                         "candidate_share_max": max(shares)})
    return rows


def _peak_rss_mib() -> float:
    """This process's peak resident memory since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    an exec, so a child started by fork + exec from a large parent reports the parent's peak (2.7 GiB seen here)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _clvq_peak_rss_child(n: int, d: int, k: int, batch: int) -> None:
    """Runs in a fresh process: streams n samples in mini-batches made on the fly; prints the peak resident memory
    (MiB) once the runtime is up (imports, one compiled program), and at the end."""
    def batches():
        for start in range(0, n, batch):
            yield np.random.default_rng(start).normal(size=(batch, d)).astype(np.float32)

    init = np.random.default_rng(-1 % 2**32).normal(size=(k, d)).astype(np.float32)
    jax.block_until_ready(jax.jit(lambda x: x @ x.T)(jnp.ones((8, 8))))  # the XLA CPU client and one compilation
    runtime = _peak_rss_mib()
    t = time.perf_counter()
    out = q.clvq_stream(batches, init, epochs=1)
    jax.block_until_ready(out.points)
    seconds = time.perf_counter() - t
    peak = _peak_rss_mib()
    print(json.dumps({"n": n, "peak_rss_mib": round(peak, 1), "runtime_rss_mib": round(runtime, 1),
                      "clvq_added_mib": round(peak - runtime, 1), "batch_and_points_mib": round(4 * (batch + k) * d / 2**20, 2),
                      "seconds": round(seconds, 2), "steps": out.steps}))


def clvq_memory(ns, d=256, k=100, batch=4096) -> list[dict]:
    rows = []
    for n in ns:
        cmd = [sys.executable, "-m", "benchmarks.quantize", "--clvq-child", f"{n},{d},{k},{batch}"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--shape", type=int, default=None,
                        help="run only the Lloyd comparison at this index of the shape list (0-7), no CLVQ memory")
    parser.add_argument("--tolerance", action="store_true", help="only the tolerance's cost per class, against numpy")
    parser.add_argument("--clvq-memory", action="store_true", help="only CLVQ's peak memory for N = 10^5 and 10^6")
    parser.add_argument("--norms", action="store_true", help="only the squared row norms (computed once per measure)")
    parser.add_argument("--cell-sums", action="store_true", help="only a pass's cell sums, each of its three ways")
    parser.add_argument("--profile", action="store_true", help="only where one plain pass goes on shape 3 (ms)")
    parser.add_argument("--hamerly", action="store_true",
                        help="only the share of samples per-sample (Hamerly) bounds leave to compute, shapes 0 and 3")
    parser.add_argument("--latent-candidates", default="", metavar="WORKDIR",
                        help="only the candidate share of the tightest block bounds on a finished run's latents")
    parser.add_argument("--clvq-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clvq_child:
        _clvq_peak_rss_child(*map(int, args.clvq_child.split(",")))
        return
    if args.tolerance:
        print(json.dumps(tolerance_cost(repeats=args.repeats)))
        return
    if args.norms:
        print(json.dumps(norms_cost(repeats=args.repeats)))
        return
    if args.cell_sums:
        print(json.dumps(cell_sums_cost(repeats=args.repeats)))
        return
    if args.hamerly:
        print(json.dumps(hamerly_share(args.iterations)))
        return
    if args.latent_candidates:
        print(json.dumps(latent_candidates(args.latent_candidates)))
        return
    if args.profile:
        print(json.dumps(pass_profile(max(args.repeats, 10))))
        return
    if args.clvq_memory:
        print(json.dumps(clvq_memory((100_000, 1_000_000))))
        return
    report = {"devices": str(jax.devices()), "cpu_count": os.cpu_count(), "sgemm_gflops": sgemm_rates(args.repeats)}
    print(json.dumps(report), flush=True)
    if args.quick:
        shapes = [(_blobs, (1, 9000, 32), 40), (_blobs, (8, 300, 128), 5)]
        ns = (20_000, 80_000)
    else:
        shapes = [(_blobs, (1, 50_000, 256), 100), (_blobs, (100, 1300, 1024), 10), (_blobs, (100, 1300, 1024), 50),
                  (_normal, (1, 50_000, 256), 100)]
        shapes += [(_blobs, (1, 1300, 16_384), k) for k in (10, 50, 100, 200)]  # Stable Diffusion's latents of one class
        ns = (100_000, 1_000_000)
    indices = range(len(shapes)) if args.shape is None else [args.shape]
    if args.shape is not None:
        ns = ()
    results = []
    for index in indices:
        make, (classes, n, d), k = shapes[index]
        # Each shape's data from its own seed, so a one-shape run (--shape) measures the same data.
        row = compare_lloyd(make(np.random.default_rng(index), classes, n, d), k, args.iterations, args.repeats)
        row["data"] = "Gaussian mixture" if make is _blobs else "standard normal"
        row["fraction_of_sgemm"] = {s: g / report["sgemm_gflops"]["numpy"] for s, g in row["gflops"].items()}
        results.append(row)
        print(json.dumps(row), flush=True)
    report["lloyd"] = results
    if ns:
        report["clvq_memory"] = clvq_memory(ns)
        print(json.dumps(report["clvq_memory"]), flush=True)


if __name__ == "__main__":
    main()
