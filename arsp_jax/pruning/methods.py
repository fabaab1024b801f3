"""The pruning methods: ARSP, its ablations and the baselines, in one registry.

Every method shares the same pipeline (``loop.py``): the same dense start, a pruning
phase of ``arsp.epochs`` epochs at the ARSP-phase learning rate in which masks are set
by *rounds* every ``arsp.prune_every`` steps, the same fine-tuning with frozen masks,
and the same evaluation.  So no method wins by training longer; methods differ only in
how a round sets the masks:

* ``controller`` — who chooses each layer's keep ratio:
  ``ppo`` (the agent), ``uniform`` (every layer at the schedule's density),
  ``global`` (one threshold over all prunable layers on per-layer normalised scores),
  ``random_search`` (a (1+1) random search over keep-ratio vectors, one evaluation per
  round, as many as the agent gets);
* ``score`` — the survival score the reservoir (or top-k) ranks by; ``None`` means the
  run's ``--score``; ``random`` draws uniform scores from the run's seed;
* ``schedule`` — ``cubic`` (the density budget tightens over the first
  ``budget_fraction`` of the rounds, Zhu & Gupta 2017) or ``oneshot`` (the first round
  prunes to the target and the masks never change again);
* ``sampled`` — weighted reservoir sampling at the run's ``--temperature``; otherwise
  deterministic top-k (temperature 0).

``control`` is the unpruned model trained through exactly the same phases (the fair
reference the pruned models are compared with; see CALIBRATION.md).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  controller: str  # ppo | uniform | global | random_search | none
  score: str | None  # None: the run's --score
  schedule: str  # cubic | oneshot
  sampled: bool  # reservoir sampling at --temperature (else top-k)
  description: str

  @property
  def prunes(self) -> bool:
    return self.controller != "none"


_ALL = [
  Method(
    "arsp",
    "ppo",
    None,
    "cubic",
    True,
    "ARSP: reservoir masks, the PPO agent sets per-layer keep ratios",
  ),
  Method(
    "arsp_fixed",
    "uniform",
    None,
    "cubic",
    True,
    "ablation: ARSP's reservoirs with keep ratios fixed uniformly (no agent)",
  ),
  Method(
    "arsp_random_search",
    "random_search",
    None,
    "cubic",
    True,
    "ablation: keep ratios from random search with the agent's number of evaluations",
  ),
  Method(
    "random",
    "uniform",
    "random",
    "oneshot",
    False,
    "baseline: random masks at the target sparsity (the proposal's static pruning)",
  ),
  Method(
    "magnitude",
    "uniform",
    "magnitude",
    "oneshot",
    False,
    "baseline: one-shot layerwise |w| on latent weights",
  ),
  Method(
    "global_magnitude",
    "global",
    "magnitude",
    "oneshot",
    False,
    "baseline: one-shot |w| with one threshold over all layers (per-layer normalised)",
  ),
  Method(
    "taylor",
    "uniform",
    "taylor",
    "oneshot",
    False,
    "baseline: one-shot layerwise |w * mean grad| (SNIP-style saliency)",
  ),
  Method(
    "gmp",
    "uniform",
    "magnitude",
    "cubic",
    False,
    "baseline: gradual magnitude pruning, cubic schedule (Zhu & Gupta 2017)",
  ),
  Method(
    "control",
    "none",
    None,
    "oneshot",
    False,
    "unpruned control: the same phases and epochs with every connection kept",
  ),
]

REGISTRY: dict[str, Method] = {m.name: m for m in _ALL}
# Every --method value: "dense" trains the dense BNN only (the shared starting point).
METHODS = ("dense",) + tuple(REGISTRY)
BASELINES = ("random", "magnitude", "global_magnitude", "taylor", "gmp")
ABLATIONS = ("arsp_fixed", "arsp_random_search")


def get(name: str) -> Method | None:
  """The method's definition; ``None`` for ``dense`` (no pruning phase)."""
  return REGISTRY.get(name)


def describe() -> str:
  return "\n".join(f"  {m.name:20s} {m.description}" for m in _ALL)
