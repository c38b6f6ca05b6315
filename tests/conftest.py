"""Shared test settings and the registry of small patterns used by parametrized tests."""

import os

# Kernels run on CPU tensors under the Triton interpreter, which Triton reads when it is
# first imported (torch may import it): set it before anything else. A GPU run sets
# TRITON_INTERPRET=0 explicitly.
os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import pytest  # noqa: E402

# CPU tensors run the kernels under the Triton interpreter; a GPU run turns it off and checks the
# kernels compiled instead (tests/test_gpu.py)
needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs the kernels on CPU under the Triton interpreter; with it off (a GPU run) tests/test_gpu.py checks them")
