"""The paper's ideas, one file each: survival scores, weighted reservoir masks, the
keep-ratio budget, the allocation rules (pure, chex-checked primitives), a round's settings and
its reward (``rounds.py``), the allocation controllers and the PPO agent, and the method
registry."""
