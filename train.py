"""Train a binary neural network and prune it with ARSP.

  python train.py                                  # Fashion-MNIST MLP: dense -> ARSP -> fine-tune
  python train.py --method=dense --epochs=5        # dense BNN only
  python train.py --dataset=cifar10 --data_dir=/data/cifar-10-batches-py
  python train.py --config=arsp_jax/configs/cifar10.py --config.arsp.delta=0.1
  python train.py --dataset=imagenet2012 --data_dir=/data/tfds --distributed
  python train.py --distributed --coordinator_address=host0:1234 --num_processes=2 --process_id=0

Rerunning with the same --workdir resumes from the latest checkpoint.
"""

from arsp_jax import cli

cli.define_flags()


def main(argv):
  """The run the parsed flags describe (inside ``cli.run``'s error boundary)."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise cli.ConfigError(
      f"Unexpected arguments {argv[1:]}: every setting is a --flag (see --help)."
    )
  cfg = cli.config_from_flags()
  if cfg.distributed:
    cli.initialize_distributed()
  import jax

  from arsp_jax.export import summary as report
  from arsp_jax.train import loop

  workdir = cli.FLAGS.workdir or cli.default_workdir(cfg)
  results = loop.run(cfg, workdir, progress=cli.FLAGS.progress, validated=True)
  if jax.process_index() == 0:  # every process holds the same results; one prints them
    print(report.format_results(results))
    print(f"\nresults: {workdir}/results.json   tensorboard: tensorboard --logdir {workdir}/tb")


if __name__ == "__main__":
  cli.run(main)
