"""Suite-wide test settings."""
import os

from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (CI included), so a failure reproduces and a
# green run stays green; `HYPOTHESIS_PROFILE=explore pytest ...` searches fresh examples locally.
settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
