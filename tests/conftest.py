import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HISTAUG_QUIET", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# The tests' own XLA programs (trainer steps, networks) go through the same persistent
# compilation cache as the stages (histaug_tf.common.enable_xla_cache): a second run of the suite,
# and the tests of one run that compile the same shapes, load them instead of compiling again.
from histaug_tf.common import enable_xla_cache  # noqa: E402

enable_xla_cache()


@pytest.fixture(scope="session")
def slurm(request):
    """The local SLURM cluster shared by every SLURM test of the session (tests/_slurm_cluster.py):
    started once under a file lock, also across xdist workers; with HISTAUG_REQUIRE_SLURM=1 a
    test that cannot get it fails instead of skipping."""
    import _slurm_cluster
    return _slurm_cluster.cluster(request.config)


def pytest_sessionfinish(session, exitstatus):
    import _slurm_cluster
    _slurm_cluster.teardown(session.config)
