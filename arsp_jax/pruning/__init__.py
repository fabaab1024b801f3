"""The paper's ideas, one file each: survival scores, weighted reservoir masks, the
keep-ratio budget, the allocation controllers and the PPO agent, and the method registry."""
