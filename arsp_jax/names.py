"""One spelling for the names users type: datasets, models, methods.

``canonical("Fashion-MNIST") == "fashion_mnist"``: lower case, ``-`` as ``_`` in the name
(a tensorflow-datasets ``builder/config`` keeps its config part as given, lower-cased). The
entry points normalise ``--dataset``/``--model``/``--method`` with it once; the preset lookup
(``configs.get_config``) and the loader (``data.load_dataset``) use the same function, and
``configs.validate`` refuses a name that is not in this spelling.
"""

from __future__ import annotations


def canonical(name: str) -> str:
  """``name`` stripped, lower-cased, with ``-`` as ``_`` (before any ``/``)."""
  if not isinstance(name, str):
    return name
  head, sep, tail = name.strip().lower().partition("/")
  return head.replace("-", "_") + sep + tail
