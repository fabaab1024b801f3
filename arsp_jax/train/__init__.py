"""Training machinery: the train state and compiled SPMD steps, the phase loop, checkpoints."""
