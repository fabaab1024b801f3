"""Evaluate a run's latest checkpoint on the test split and print its model summary.

  python eval.py --workdir=runs/fashion_mnist_mlp_arsp_s0
  python eval.py --workdir=runs/fashion_mnist_mlp_arsp_s0 --export=model.arsp

Writes <workdir>/eval.json.  --export also writes the packed model file and (unless
--export_check=false) runs the packed inference engine (compiled, numpy as the reference) on the split.  --data_dir overrides where the dataset is read from.

--export never replaces a file unless --overwrite is given, never a special file (a FIFO, a
device) nor a file of a run directory, and writes atomically (a temporary file, then a rename).
"""

import os

from absl import flags

flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
flags.DEFINE_string("data_dir", None, "Override the run's data directory.")
flags.DEFINE_string("split", "test", "test or val.")
flags.DEFINE_string(
  "export",
  None,
  "Write the model as a packed, self-contained file (npz "
  "+ JSON header, loadable with numpy only) to this path.",
)
flags.DEFINE_bool(
  "export_check",
  True,
  "With --export: run the packed inference engine on "
  "the split and print its accuracy next to the Flax model's.",
)
flags.DEFINE_bool(
  "overwrite",
  False,
  "With --export: replace an existing regular file at the --export path.",
)
FLAGS = flags.FLAGS


def main(argv):
  """Evaluates --workdir (inside ``cli.run``'s error boundary)."""
  from absl import logging

  from arsp_jax import cli

  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise cli.ConfigError(
      f"Unexpected arguments {argv[1:]}: every setting is a --flag (see --help)."
    )
  if FLAGS.overwrite and not FLAGS.export:
    raise cli.ConfigError("--overwrite applies to --export=PATH only; give --export or drop it.")
  from arsp_jax.train import evaluate

  out = evaluate.evaluate_workdir(
    FLAGS.workdir,
    data_dir=FLAGS.data_dir,
    split=FLAGS.split,
    export=FLAGS.export,
    export_check=FLAGS.export_check,
    overwrite=FLAGS.overwrite,
  )
  print(evaluate.format_eval(out))
  print(f"\nwrote {os.path.join(out['workdir'], 'eval.json')}")


if __name__ == "__main__":
  from arsp_jax import cli

  cli.run(main)
