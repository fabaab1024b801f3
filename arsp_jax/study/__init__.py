"""The comparison harness: grids of methods x sparsities x seeds, statistics and plots."""
