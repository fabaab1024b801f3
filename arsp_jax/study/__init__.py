"""The comparison harness and its results.

grid.py (planning, claiming and running the runs; runs.csv), stats.py (scipy statistics),
plots.py (figures), report.py (a study's report.md), __main__.py (the command line:
``python -m arsp_jax.study``), results.py (RESULTS.md and README's main-job block from the
committed results: ``python -m arsp_jax.study.results``).
"""
