"""`make test` keeps each group of tests (shared fixtures, the numba engine's kernels) on one
pytest-xdist worker; this fails if the installed pytest / pytest-xdist pair drops the groups.

pytest 9.2 with pytest-xdist 3.8 dropped them silently: xdist marks a test's group by setting
``item._nodeid``, which pytest 9 no longer reads, so every group's fixtures and kernels were built
on both workers (the study grid twice, ~40 s each). requirements.txt pins a pair that works.
"""

import pytest


@pytest.mark.xdist_group("group_check")
def test_xdist_group_reaches_the_scheduler(request):
  if not getattr(request.config.option, "loadgroup", False):  # set on --dist loadgroup workers
    pytest.skip("not a pytest-xdist --dist loadgroup worker")
  assert request.node.nodeid.endswith("@group_check"), (
    f"{request.node.nodeid}: pytest-xdist did not apply the xdist_group marker (this pytest / "
    "pytest-xdist pair is incompatible; install the versions pinned in requirements.txt)"
  )
