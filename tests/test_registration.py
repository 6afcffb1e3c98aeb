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


def test_the_import_finder_hands_back_a_loader_without_exec_module_as_found(monkeypatch):
    # A legacy (PEP 302) loader with only `load_module`, from a finder placed by another package: there is no
    # `exec_module` to wrap, so the spec goes back untouched rather than failing the import of diffusers.
    import importlib.machinery
    import sys

    from diffusers_ruyi._registration import _InstallAfterDiffusersImport

    class LegacyLoader:
        def load_module(self, fullname):  # pragma: no cover - never imported here
            raise AssertionError

    loader = LegacyLoader()

    class LegacyFinder:
        def find_spec(self, fullname, path, target=None):
            return importlib.machinery.ModuleSpec(fullname, loader) if fullname == "diffusers" else None

    finder = _InstallAfterDiffusersImport()
    monkeypatch.delitem(sys.modules, "diffusers")  # else `find_spec` answers with the imported module's spec
    monkeypatch.setattr(sys, "meta_path", [finder, LegacyFinder(), *sys.meta_path])
    spec = finder.find_spec("diffusers", None)
    assert spec.loader is loader and not hasattr(loader, "exec_module")
    assert sys.meta_path[0] is finder  # still in place for the real import
