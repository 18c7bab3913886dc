"""Pair selection on real-pool scales (``experiments.select``), end to end.

    python -m benchmarks.select_scale --scale hh       # 1,340 prompts x 16 completions, 2,560 features -> PCA 128, n = 80,400 each once
    python -m benchmarks.select_scale --scale 1e6      # 22,200 prompts x 10 completions (999,000 comparisons), 128 features

The pool is synthetic (Gaussian features with a decaying spectrum, a peaked
reference), written to Parquet first; the timing is of the command's own stages
(read, PCA, edges and curvature, design, baselines, write), plus peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

SCALES = {
    "hh": dict(prompts=1340, completions=16, dim=2560, pca=128, budget=80_400),
    "1e6": dict(prompts=22_200, completions=10, dim=128, pca=None, budget=100_000),
    "small": dict(prompts=200, completions=8, dim=256, pca=32, budget=2_000),
}


def make_pool(path: Path, prompts: int, completions: int, dim: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    scales = (1.0 / np.sqrt(1.0 + np.arange(dim))).astype(np.float32)
    n = prompts * completions
    feats = (rng.standard_normal((n, dim), dtype=np.float32) * scales)
    feats += np.repeat(rng.standard_normal((prompts, dim), dtype=np.float32) * scales, completions, axis=0)  # prompt effects
    logits = 2.0 * rng.standard_normal((prompts, completions))
    logp = (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).ravel()
    pid = np.repeat(np.arange(prompts), completions)
    table = pa.table({
        "prompt_id": pa.array([f"p{i}" for i in pid]),
        "completion_id": pa.array([f"p{i}-c{j}" for i, j in zip(pid, np.tile(np.arange(completions), prompts))]),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), dim),
        "ref_logprob": pa.array(logp),
    })
    pq.write_table(table, path)


def run(scale: str, workdir: Path) -> dict:
    from omegaconf import OmegaConf

    from experiments.select import select

    spec = SCALES[scale]
    pool = workdir / f"pool_{scale}.parquet"
    t0 = time.perf_counter()
    make_pool(pool, spec["prompts"], spec["completions"], spec["dim"])
    made = time.perf_counter() - t0
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "experiments" / "conf" / "select.yaml")
    cfg.pop("hydra")
    cfg.update(pool=str(pool), out=str(workdir / f"queue_{scale}.jsonl"), budget=spec["budget"], pca=spec["pca"])
    t0 = time.perf_counter()
    report = select(cfg)
    total = time.perf_counter() - t0
    return {"scale": scale, **spec, "pool_file_s": made, "total_s": total, "stages_s": report["seconds"],
            "candidate_comparisons": report["candidate_comparisons"], "criterion": report["criterion"],
            "relative_certificate": report["solver"].get("relative_certificate"),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="hh")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(a.scale, Path(a.workdir or tmp))
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
