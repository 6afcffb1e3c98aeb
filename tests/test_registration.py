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


def test_the_import_finder_leaves_other_modules_alone():
    # Kills `fullname != "diffusers"` -> `fullname < "diffusers"` in _InstallAfterDiffusersImport.find_spec
    # (_registration.py): a module other than diffusers (whatever its name sorts as) is not found by the finder,
    # which stays in place, one shot, for diffusers.
    import sys

    from diffusers_ruyi._registration import _InstallAfterDiffusersImport

    finder = _InstallAfterDiffusersImport()
    sys.meta_path.insert(0, finder)
    try:
        # (real modules on either side of "diffusers": "accelerate" and "PIL" sort before it, "numpy" after)
        for name in ("aaa_module", "accelerate", "PIL", "numpy", "zzz_module", "diffusers_ruyi"):
            assert finder.find_spec(name, None) is None
            assert finder in sys.meta_path
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
