"""With the budget off (``--target_sparsity=-1``), does the density the agent reaches move with λ?

Runs the pipeline once per λ (the agent chooses how much to keep, rewarded
``accuracy − λ·density``) and records the final density and accuracy.

  python bench/lambda_sweep.py                               # λ in 0.05, 0.1, 0.2, 0.4
  python bench/lambda_sweep.py --epochs=10 --finetune_epochs=10

Writes bench/results/lambda_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arsp_jax import configs  # noqa: E402
from arsp_jax.train import loop  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--lambdas", default="0.05,0.1,0.2,0.4")
  ap.add_argument("--epochs", type=int, default=3)
  ap.add_argument("--finetune_epochs", type=int, default=2)
  ap.add_argument("--workdir", default="/tmp/arsp_lambda_sweep")
  ap.add_argument("--out", default="bench/results/lambda_sweep.json")
  args = ap.parse_args()
  rows = []
  for lam in [float(x) for x in args.lambdas.split(",")]:
    over = {"arsp.target_sparsity": -1.0, "arsp.lambda_density": lam, "epochs": args.epochs,
            "finetune.epochs": args.finetune_epochs}  # fmt: skip
    cfg = configs.apply_overrides(configs.get_config("fashion_mnist"), over)
    t = time.time()
    r = loop.run(
      cfg, os.path.join(args.workdir, f"lam{lam:g}"), progress=False, log=lambda *a: None
    )
    rows.append({"lambda": lam, "sparsity": r["sparsity"], "test_accuracy": r["test_accuracy"],
                 "keep_ratios": r["agent"]["final_keep_ratios"], "seconds": time.time() - t})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
  out = {"benchmark": "lambda_sweep", "settings": {**vars(args), "cpu": cpu_model()}, "rows": rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
