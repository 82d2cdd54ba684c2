"""The RF-DPO feedback simulator on held-out ratings, beside the user-mean and item-mean baselines.

    python bench/feedback_simulator.py --dataset ml-100k --data-path ../shared/data/ml-100k
    python bench/feedback_simulator.py --dataset synthetic

Fits :class:`align3gr_kit.feedback.SimulatorOracle` on the training split's ratings only, scores the
validation/test ratings (RMSE; 3-level accuracy and macro-F1 of disliked 1 / neutral 2-3 / liked 4-5)
and prints one JSON object: the table, the fit time, and, on random catalogue pairs (the items RF-DPO
shows), the share of each level the simulator grades beside the logged ratings' shares, and the
process's peak RSS. The simulator is a ``surprise`` SVD with numpy/scipy around it: no torch work, so it
runs on the CPU whatever ``--device`` says (the flag is accepted like every bench's).
"""

from __future__ import annotations

import argparse

import numpy as np

CPU_REASON = "surprise SVD and numpy, no torch model"


def main() -> None:
    from align3gr_kit import bench_device
    from align3gr_kit.config import DataConfig
    from align3gr_kit.data import load_dataset
    from align3gr_kit.feedback import SimulatorOracle, heldout_table, rating_level

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-path", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=20000, help="random (user, item) pairs graded for the level shares")
    bench_device.add_device_argument(p, cpu_by_nature=CPU_REASON)
    args = p.parse_args()
    device = bench_device.cpu_by_nature_note(args.device, CPU_REASON)
    ds = load_dataset(DataConfig(dataset=args.dataset, data_path=args.data_path), seed=args.seed)
    with bench_device.timed(device) as fit:
        sim = SimulatorOracle.fit(ds, seed=args.seed)
    fit_seconds = round(fit.seconds, 2)
    table = heldout_table(sim, ds)
    rng = np.random.default_rng(args.seed)
    users, items = rng.integers(0, ds.n_users, args.pairs), rng.integers(0, ds.n_items, args.pairs)
    graded = sim.levels(users.tolist(), items.tolist())
    logged = [rating_level(float(r)) for r in ds.interactions.rating]
    share = {lv: {"simulator_on_random_pairs": round(graded.count(lv) / len(graded), 4),
                  "logged_ratings": round(logged.count(lv) / len(logged), 4)} for lv in ("disliked", "neutral", "liked")}
    bench_device.emit({"dataset": ds.name, "fit_seconds": fit_seconds, "heldout": table.to_dict("records"),
                       "level_shares": share, **bench_device.device_fields(device, None)})


if __name__ == "__main__":
    main()
