"""The pruning methods: ARSP, its ablations and the baselines, in one registry.

Every method shares the same pipeline (``train/loop.py``): the same dense start, a pruning
phase of ``arsp.epochs`` epochs at the pruning-phase learning rate in which masks are set by
*rounds* every ``arsp.prune_every`` steps, the same fine-tuning with frozen masks, and the same
evaluation. So no method wins by training longer; methods differ only in how a round sets the
masks:

* ``controller`` — who chooses each layer's keep ratio (``controllers.py``): ``ppo`` (the
  agent), ``random_search`` (as many candidate evaluations as the agent), or a fixed rule:
  ``uniform``, ``erk``, ``uniform_plus``, ``global`` (one threshold on per-layer
  mean-normalised scores), ``lamp`` (one threshold on LAMP scores); ``random_alloc`` (one fixed
  random allocation per ``arsp.alloc_seed``: the headroom probe); ``none`` keeps everything;
* ``score`` — the survival score the masks rank by; ``None`` means the run's ``--score``;
  ``random`` draws uniform scores from the run's seed;
* ``schedule`` — ``cubic`` (the density budget tightens over the first ``budget_fraction`` of
  the rounds, Zhu & Gupta 2017) or ``oneshot`` (the first round prunes to the target and the
  masks never change again);
* ``sampled`` — weighted reservoir sampling at the run's ``--temperature`` (annealed to 0 over
  the budget rounds by default); otherwise deterministic top-k. ``erk_sampled``,
  ``lamp_sampled`` and ``uniform_plus_sampled`` are the rules with sampled masks (gmp's sampled
  twin is ``arsp_fixed``): sampling is orthogonal to who sets the ratios.

The allocation rules share ``gmp``'s schedule, score and top-k selection, so only their
per-layer ratios differ. ARSP's ablations form a 2 × 2: {uniform ratios, agent} × {top-k,
reservoir sampling}: ``gmp``, ``arsp_topk``, ``arsp_fixed``, ``arsp``.
``control`` is the unpruned model trained through exactly the same phases.
"""

from __future__ import annotations

import dataclasses

from arsp_jax import registry as registry_lib
from arsp_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  controller: str  # a name in controllers.REGISTRY
  score: str | None  # None: the run's --score
  schedule: str  # cubic | oneshot
  sampled: bool  # reservoir sampling at --temperature (else top-k)
  description: str

  @property
  def prunes(self) -> bool:
    return self.controller != "none"


_ALL = [
  Method("arsp", "ppo", None, "cubic", True,
         "ARSP: the PPO agent sets per-layer keep ratios; reservoir-sampled masks"),
  Method("arsp_topk", "ppo", None, "cubic", False,
         "ablation: the agent's keep ratios with top-k masks (no sampling)"),
  Method("arsp_fixed", "uniform", None, "cubic", True,
         "ablation: reservoir-sampled masks with uniform keep ratios (no agent)"),
  Method("arsp_random_search", "random_search", None, "cubic", True,
         "ablation: keep ratios from random search with the agent's number of evaluations"),
  Method("random", "uniform", "random", "oneshot", False,
         "baseline: random masks at the target sparsity (the proposal's static pruning)"),
  Method("magnitude", "uniform", "magnitude", "oneshot", False,
         "baseline: one-shot layerwise |w| on latent weights"),
  Method("global_magnitude", "global", "magnitude", "oneshot", False,
         "baseline: one-shot |w| with one threshold over all layers (per-layer normalised)"),
  Method("taylor", "uniform", "taylor", "oneshot", False,
         "baseline: one-shot layerwise |w| * EMA|grad| (a Taylor/SNIP-style saliency)"),
  Method("gmp", "uniform", "magnitude", "cubic", False,
         "baseline: gradual magnitude pruning, uniform ratios, cubic schedule (Zhu & Gupta)"),
  Method("erk", "erk", "magnitude", "cubic", False,
         "allocation rule: Erdos-Renyi-Kernel ratios (Evci et al. 2020), gmp's schedule"),
  Method("lamp", "lamp", "magnitude", "cubic", False,
         "allocation rule: one threshold on LAMP scores (Lee et al. 2021), gmp's schedule"),
  Method("uniform_plus", "uniform_plus", "magnitude", "cubic", False,
         "allocation rule: uniform+ (Gale et al. 2019), capped first layer, gmp's schedule"),
  Method("global_gmp", "global", "magnitude", "cubic", False,
         "allocation rule: global magnitude threshold under gmp's cubic schedule"),
  Method("erk_sampled", "erk", "magnitude", "cubic", True,
         "sampling on a rule: ERK ratios with reservoir-sampled masks (ARSP's temperature)"),
  Method("lamp_sampled", "lamp", "magnitude", "cubic", True,
         "sampling on a rule: LAMP's ratios with reservoir-sampled masks"),
  Method("uniform_plus_sampled", "uniform_plus", "magnitude", "cubic", True,
         "sampling on a rule: uniform+ ratios with reservoir-sampled masks"),
  Method("random_alloc", "random_alloc", "magnitude", "cubic", False,
         "headroom probe: one fixed random allocation (--arsp.alloc_seed), gmp's schedule"),
  Method("control", "none", None, "oneshot", False,
         "unpruned control: the same phases and epochs with every connection kept"),
]  # fmt: skip

REGISTRY: Registry[Method] = registry_lib.of("method", {m.name: m for m in _ALL})
# Every --method value: "dense" trains the dense BNN only (the shared starting point).
METHODS = ("dense",) + tuple(REGISTRY)
BASELINES = (
  "random",
  "magnitude",
  "global_magnitude",
  "taylor",
  "gmp",
  "erk",
  "lamp",
  "uniform_plus",
  "global_gmp",
)
RULES = ("gmp", "erk", "lamp", "uniform_plus", "global_gmp", "global_magnitude")
ABLATIONS = ("arsp_topk", "arsp_fixed", "arsp_random_search")
# Each rule's reservoir-sampled twin: (rule with top-k masks, the same rule with sampled masks).
# gmp's twin is arsp_fixed (uniform ratios, sampled masks).
SAMPLED_TWINS = (
  ("gmp", "arsp_fixed"),
  ("erk", "erk_sampled"),
  ("lamp", "lamp_sampled"),
  ("uniform_plus", "uniform_plus_sampled"),
)


def get(name: str) -> Method | None:
  """The method's definition; ``None`` for ``dense`` and unknown names (``validate`` refuses
  those before anything runs)."""
  return REGISTRY.get(name, None)
