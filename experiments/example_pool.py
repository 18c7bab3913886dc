"""A small example pool for ``experiments.select``, and a simulated annotator for it.

    python -m experiments.example_pool make --out example/pool.parquet            # 100 prompts x 8 completions
    python -m experiments.example_pool label --queue example/queue.jsonl --truth example/pool.truth.json --out example/labelled.jsonl

``make`` writes the training pool of :func:`synthetic.contextual_world` as a table of
completions (``prompt_id``, ``completion_id``, ``features``, ``ref_logprob``, and
``prompt``/``completion`` texts that name the underlying vectors), plus
``<out>.truth.json`` with ``theta*`` and ``beta`` (the truth a real pool does not
have). ``label`` plays the annotators: a Bradley-Terry label for every line of a
queue, written as ``preferred`` (``"a"`` or ``"b"``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from experiments.cell import float64  # noqa: E402
from synthetic.worlds import contextual_world  # noqa: E402

__all__ = ["make_example_pool", "label_queue"]


def make_example_pool(out, num_prompts: int = 100, num_completions: int = 8, seed: int = 0, theta_scale: float = 1.0) -> Path:
    """Write a pool table (Parquet or JSON Lines, by suffix) and its ``.truth.json``."""
    import pyarrow as pa
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet as pq

    with float64():
        world = contextual_world(jax.random.key(seed), num_train_prompts=num_prompts, num_eval_prompts=1,
                                 num_completions=num_completions, theta_scale=theta_scale)
    f = np.asarray(world.train.features)
    lr = np.asarray(world.train.log_ref)
    m, k, _ = f.shape
    rows = {"prompt_id": [], "completion_id": [], "features": [], "ref_logprob": [], "prompt": [], "completion": []}
    for i in range(m):
        for j in range(k):
            rows["prompt_id"].append(f"p{i:04d}")
            rows["completion_id"].append(f"p{i:04d}-c{j}")
            rows["features"].append(f[i, j].tolist())
            rows["ref_logprob"].append(float(lr[i, j]))
            rows["prompt"].append(f"prompt {i}: context {np.round(f[i, j, :3], 2).tolist()}")
            rows["completion"].append(f"completion {j} of prompt {i}: action {np.round(f[i, j, 3:6], 2).tolist()}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(pa.table(rows), out)
    else:
        with open(out, "w") as fh:
            for r in range(len(rows["prompt_id"])):
                fh.write(json.dumps({c: v[r] for c, v in rows.items()}) + "\n")
    truth = {"theta_star": np.asarray(world.theta_star).tolist(), "beta": float(world.beta)}
    out.with_name(out.name.rsplit(".", 1)[0] + ".truth.json").write_text(json.dumps(truth))
    return out


def label_queue(queue, truth, pool, out, seed: int = 0) -> Path:
    """Bradley-Terry labels ``P(a beats b) = sigmoid(beta theta* . (phi_a - phi_b))`` for a queue."""
    from experiments.select import read_table

    t = json.loads(Path(truth).read_text())
    theta, beta = np.asarray(t["theta_star"]), float(t["beta"])
    table = read_table(pool)
    feats = {(str(p), str(c)): np.asarray(v) for p, c, v in zip(table.column("prompt_id").to_pylist(),
                                                                  table.column("completion_id").to_pylist(),
                                                                  table.column("features").to_pylist())}
    lines = [json.loads(x) for x in Path(queue).read_text().splitlines() if x.strip()]
    u = np.random.default_rng(seed).uniform(size=len(lines))
    with open(out, "w") as fh:
        for r, uu in zip(lines, u):
            z = feats[(str(r["prompt_id"]), str(r["completion_a"]))] - feats[(str(r["prompt_id"]), str(r["completion_b"]))]
            p_a = 1.0 / (1.0 + np.exp(-beta * float(theta @ z)))
            fh.write(json.dumps({**r, "preferred": "a" if uu < p_a else "b"}) + "\n")
    return Path(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write an example pool and its truth")
    mk.add_argument("--out", default="example/pool.parquet")
    mk.add_argument("--prompts", type=int, default=100)
    mk.add_argument("--completions", type=int, default=8)
    mk.add_argument("--seed", type=int, default=0)
    lb = sub.add_parser("label", help="label a queue with the simulated annotator")
    lb.add_argument("--queue", required=True)
    lb.add_argument("--truth", default="example/pool.truth.json")
    lb.add_argument("--pool", default="example/pool.parquet")
    lb.add_argument("--out", required=True)
    lb.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "make":
        p = make_example_pool(a.out, a.prompts, a.completions, a.seed)
        print(f"wrote {p} ({a.prompts} prompts x {a.completions} completions) and its truth")
    else:
        p = label_queue(a.queue, a.truth, a.pool, a.out, a.seed)
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
