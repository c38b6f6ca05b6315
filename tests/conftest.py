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
