"""`diffusers_ruyi._registration`: diffusers finds the package's classes by name, and registering again is a no-op."""

import diffusers

from diffusers_ruyi._registration import EXPOSED_NAMES, register_with_diffusers


def test_registering_twice_wraps_diffusers_once():
    # `import diffusers_ruyi` registers; a second registration (a reload, another entry point) must not stack a
    # second look-up function on the first.
    register_with_diffusers()
    first = diffusers.__dict__["__getattr__"]
    register_with_diffusers()
    assert diffusers.__dict__["__getattr__"] is first
    for name in EXPOSED_NAMES:
        assert getattr(diffusers, name).__module__.startswith("diffusers_ruyi.")
