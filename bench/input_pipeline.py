"""Input pipeline: images/s of the grain training path on ImageNet-like JPEGs, against the step.

Generates into a temporary directory a tensorflow-datasets dataset (ArrayRecord files, prepared
for real, as ``tfds build`` writes it) of ``--images`` JPEGs of ``--width`` x ``--height``
pixels, each a random window of a few large smooth-noise "panoramas" (four octaves of bicubic
noise plus per-pixel grain, random flip and colour gains), encoded with PIL at ``--quality``.
The images are stored as ``tfds.features.Image(encoding_format="jpeg")`` features holding the
JPEG bytes, the form of tfds' ``imagenet2012``; tfds decodes them with PIL when TensorFlow is
absent (``decode_example_np``), so the benchmark needs no TensorFlow, like training.

First it times the dense training step of ``--model`` (ResNet-18 by default) at
``--image_size`` on synthetic inputs at ``--step_batch`` on one device of this machine (a few
real jitted steps after a compile). Then it reads the dataset back by name through the training
input path — ``load_dataset`` and ``Dataset.train_batches``: ``tfds.data_source`` -> grain ->
decode + random-resized-crop + flip at ``--image_size``, standardisation, float32 batches of
``--batch_size`` — for each worker count of ``--workers`` (0: grain in the training process,
decoding in the source's thread pool; W > 0: W grain worker processes, each decoding in one
thread, 2 batches ready per worker), and reports images/s per training process in the steady
state (after the first batches, which the workers' start-up and their prefetch buffers distort;
the time to the first batch is reported apart). The pipeline keeps up when its images/s reach
the step's. Both are measured one after the other, in one process, on the same cores; in
training they would share them (on an accelerator, the step would not use the host's cores).

  python bench/input_pipeline.py                            # 3,000 JPEGs, workers 0,1,2
  python bench/input_pipeline.py --images=500 --workers=1 --step_steps=2   # quick look

Writes bench/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import cpu_model  # noqa: E402

DATASET_NAME = "bench_jpeg_images"
NUM_CLASSES = 1000
_PANORAMA_SCALE = 2  # each panorama is 2 x 2 image sizes; every image is a window of one


def _panorama(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """uint8 [h,w,3]: four octaves of bicubic smooth noise plus per-pixel grain."""
  from PIL import Image

  out = np.zeros((h, w, 3), np.float32)
  for cells, amp in ((3, 0.55), (12, 0.35), (48, 0.2), (160, 0.25)):
    cells *= _PANORAMA_SCALE
    small = rng.integers(0, 256, (max(2, round(cells * h / w)), cells, 3), dtype=np.uint8)
    out += amp * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
  out += 6.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
  out -= out.mean() - 115.0
  return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_examples(n: int, width: int, height: int, quality: int, seed: int):
  """``n`` (JPEG bytes, label) pairs: windows of smooth-noise panoramas, flipped and tinted."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  panoramas = [_panorama(rng, _PANORAMA_SCALE * height, _PANORAMA_SCALE * width) for _ in range(4)]
  for i in range(n):
    pano = panoramas[i % len(panoramas)]
    y = int(rng.integers(0, pano.shape[0] - height + 1))
    x = int(rng.integers(0, pano.shape[1] - width + 1))
    image = pano[y : y + height, x : x + width]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    gains = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    image = np.clip(image * gains, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    yield buf.getvalue(), int(rng.integers(0, NUM_CLASSES))


def prepare_jpeg_tfds(
  data_dir: str, num_train: int, num_test: int, width: int = 500, height: int = 375,
  quality: int = 90, seed: int = 0,
) -> str:  # fmt: skip
  """Prepares ``bench_jpeg_images`` in ``data_dir`` (ArrayRecord files and dataset_info, as
  ``tfds build --file_format=array_record`` writes them) with JPEG ``image`` features and
  ``label`` in [0, 1000); read back by name from the files. Returns the dataset name."""
  import tensorflow_datasets as tfds

  class BenchJpegImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {
        "train": self._generate_examples(num_train, seed),
        "test": self._generate_examples(num_test, seed + 1),
      }

    def _generate_examples(self, n, split_seed):
      for i, (jpeg, label) in enumerate(jpeg_examples(n, width, height, quality, split_seed)):
        yield i, {"image": jpeg, "label": label}

  BenchJpegImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return DATASET_NAME


def _quiet_tfds():
  """tfds' progress bars and PIL-fallback warning would drown the benchmark's output."""
  import logging

  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.ERROR)


def time_pipeline(name: str, data_dir: str, workers: int, args) -> dict:
  """Steady-state images/s of one epoch of training batches through ``workers`` processes."""
  from arsp_jax.data import load_dataset

  ds = load_dataset(
    name, data_dir, val_size=0, seed=0, image_size=args.image_size, input_workers=workers
  )
  skip = max(2, 2 * (workers + 1))  # the first batches: start-up and prefetch buffers
  arrivals = []
  t0 = time.perf_counter()
  shape = None
  for batch in ds.train_batches(0, args.batch_size, 0):
    arrivals.append(time.perf_counter())
    shape = batch["image"].shape
  steps = len(arrivals)
  if steps <= skip + 1:
    raise SystemExit(
      f"--images={args.images} gives {steps} batches of {args.batch_size}; the steady state "
      f"needs more than {skip + 1} (raise --images)."
    )
  steady = (steps - 1 - skip) * args.batch_size / (arrivals[-1] - arrivals[skip])
  row = {
    "workers": workers,
    "decode_threads_in_process": ds._source._pool._max_workers
    if workers == 0 and ds._source._pool is not None
    else (1 if workers == 0 else 0),
    "decode_threads_per_worker": 1 if workers else 0,
    "batches": steps,
    "batches_skipped": skip,
    "batch_shape": list(shape),
    "batch_dtype": "float32",
    "first_batch_s": arrivals[0] - t0,
    "epoch_s": arrivals[-1] - t0,
    "images_per_s": steady,
    "images_per_s_whole_epoch": steps * args.batch_size / (arrivals[-1] - t0),
  }
  print(
    f"  {workers} worker(s): {steady:7.1f} images/s steady ({row['first_batch_s']:.1f} s to the "
    f"first batch, {row['epoch_s']:.1f} s for {steps} batches)",
    flush=True,
  )
  return row


def time_step(args) -> dict:
  """The dense training step of ``--model`` at ``--image_size`` on synthetic inputs."""
  import jax

  from arsp_jax import configs
  from arsp_jax.train import loop
  from arsp_jax.train import step as step_lib

  size = args.image_size
  over = {
    "dataset": "synthetic",
    "model": args.model,
    "num_devices": 1,
    "batch_size": args.step_batch,
    "dataset_kwargs.image_shape": (size, size, 3),
    "dataset_kwargs.num_classes": NUM_CLASSES,
    "dataset_kwargs.num_train": 2 * args.step_batch + 16,
    "dataset_kwargs.num_test": 16,
    "val_size": 16,
    "arsp.prune_every": 1,  # (the pruning phase is not run; its config must validate)
    "arsp.calib_size": 16,
    "arsp.reward_size": 16,
  }
  cfg = configs.apply_overrides(configs.get_config("synthetic"), over)
  workdir = tempfile.mkdtemp(prefix="arsp_bench_input_")
  pipe = loop.Pipeline(cfg, workdir, progress=False)
  batches = [
    step_lib.shard_batch(b, pipe.mesh) for b in pipe.dataset.train_batches(0, cfg.batch_size, 0)
  ]
  _, steps = pipe.steps("dense")
  state = pipe.fresh_state("dense")
  t = time.perf_counter()
  state, m = steps.train()(state, batches[0])
  jax.block_until_ready(m["loss"])
  first = time.perf_counter() - t
  state, m = steps.train()(state, batches[1 % len(batches)])  # one more before timing
  jax.block_until_ready(m["loss"])
  times = []
  for i in range(args.step_steps):
    t = time.perf_counter()
    state, m = steps.train()(state, batches[i % len(batches)])
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t)
  shutil.rmtree(workdir, ignore_errors=True)  # nothing in it is kept
  med = float(np.median(times))
  print(
    f"  {args.model} dense step at {size}x{size}, batch {args.step_batch}: {1e3 * med:.0f} ms "
    f"({args.step_batch / med:.1f} images/s; median of {len(times)})",
    flush=True,
  )
  return {
    "model": args.model,
    "model_kwargs": dict(cfg.model_kwargs),
    "image_size": size,
    "batch_size": args.step_batch,
    "steps_timed": len(times),
    "first_call_s": first,
    "ms_per_step": 1e3 * med,
    "ms_all_steps": [1e3 * x for x in times],
    "images_per_s": args.step_batch / med,
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
  }


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--images", type=int, default=3000, help="training JPEGs generated")
  ap.add_argument("--width", type=int, default=500)
  ap.add_argument("--height", type=int, default=375)
  ap.add_argument("--quality", type=int, default=90, help="JPEG quality (PIL)")
  ap.add_argument("--image_size", type=int, default=224, help="crop size of the training batches")
  ap.add_argument("--batch_size", type=int, default=32, help="pipeline batch (one process)")
  ap.add_argument("--workers", default="0,1,2", help="grain worker counts timed, in order")
  ap.add_argument("--model", default="resnet18")
  ap.add_argument("--step_batch", type=int, default=32, help="batch of the timed step")
  ap.add_argument("--step_steps", type=int, default=5, help="steps timed (after 2 untimed)")
  ap.add_argument("--no_step", action="store_true", help="time the pipeline only")
  ap.add_argument("--data_dir", default=None, help="keep the dataset here (default: temp dir)")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "input_pipeline.json"))
  args = ap.parse_args()
  workers = [int(w) for w in args.workers.split(",")]

  import jax
  import PIL
  import tensorflow_datasets as tfds

  _quiet_tfds()
  load_start = list(os.getloadavg())
  # The step first (a failure there costs little), then the dataset and the pipeline; the
  # JSON is written after each worker count, so an interrupted run keeps what it measured.
  step = None if args.no_step else time_step(args)
  out = {
    "benchmark": "input_pipeline",
    "settings": vars(args),
    "dataset": None,
    "pipeline": {
      "path": "load_dataset -> Dataset.train_batches -> grain (arsp_jax/data/grain_loader.py)",
      "augmentation": f"decode + random-resized-crop + flip to {args.image_size}, standardised",
      "batch_size": args.batch_size,
      "buffer_per_worker": 2,
      "rows": [],
    },
    "step": step,
    "keeps_up": {},
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_average_at_start": load_start,
    "load_average_at_end": None,
    "jax": jax.__version__,
    "grain": importlib.metadata.version("grain"),
    "tensorflow_datasets": tfds.__version__,
    "pillow": PIL.__version__,
    "time": None,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def save():
    out["load_average_at_end"] = list(os.getloadavg())
    out["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(args.out, "w") as f:
      json.dump(out, f, indent=2)

  tmp = None
  data_dir = args.data_dir
  if data_dir is None:
    tmp = data_dir = tempfile.mkdtemp(prefix="arsp_bench_jpeg_")
  try:
    t = time.perf_counter()
    name = prepare_jpeg_tfds(
      data_dir, args.images, 16, args.width, args.height, args.quality, seed=0
    )
    gen_s = time.perf_counter() - t
    files = [
      os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if "train.array_record" in f
    ]
    train_bytes = sum(os.path.getsize(f) for f in files)
    out["dataset"] = {
      "name": name,
      "format": "tfds ArrayRecord, tfds.features.Image(encoding_format='jpeg'), PIL-encoded",
      "train_images": args.images,
      "width": args.width,
      "height": args.height,
      "jpeg_quality": args.quality,
      "train_bytes_per_image": train_bytes / args.images,
      "generate_s": gen_s,
      "decoder": "PIL (tfds decode_example_np; OpenCV not installed)",
    }
    print(
      f"{args.images} JPEGs of {args.width}x{args.height} (quality {args.quality}): "
      f"{train_bytes / args.images / 1024:.0f} KiB each in ArrayRecord, generated in "
      f"{gen_s:.0f} s",
      flush=True,
    )
    print(f"pipeline, batches of {args.batch_size} at {args.image_size}x{args.image_size}:")
    for w in workers:
      r = time_pipeline(name, data_dir, w, args)
      if step is not None:
        r["ratio_to_step"] = r["images_per_s"] / step["images_per_s"]
        out["keeps_up"][str(w)] = r["ratio_to_step"] >= 1.0
        print(
          f"    {r['ratio_to_step']:.1f}x the step's consumption "
          f"({'keeps up' if r['ratio_to_step'] >= 1 else 'does NOT keep up'})",
          flush=True,
        )
      out["pipeline"]["rows"].append(r)
      save()
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  print(f"load average {out['load_average_at_end'][0]:.1f} at the end -> {args.out}")


if __name__ == "__main__":
  main()
