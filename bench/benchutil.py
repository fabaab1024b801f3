"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

import platform


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), for the machine description in the JSON."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
