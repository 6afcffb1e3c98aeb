"""scripts/mutation.py: its module -> tests map and the cosmic-ray config it writes (cosmic-ray itself is a dev tool,
not installed in CI, so nothing here runs it)."""

import importlib.util
import pathlib
import re
import shlex
import sys

import pytest


REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("ruyi_mutation_script", REPO / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_module_and_test_file_exists(mutation):
    for module, args in mutation.MODULE_TESTS.items():
        assert (REPO / "diffusers_ruyi" / module).is_file(), module
        files = [a for a in args if a.startswith("tests/")]
        assert files, module
        for name in files:  # a file, or one test in it (`file::test`)
            path, _, test = name.partition("::")
            assert (REPO / path).is_file(), f"{module}: {name}"
            assert not test or f"def {test}(" in (REPO / path).read_text(), f"{module}: {name}"


def test_every_module_of_the_package_is_mapped(mutation):
    # A new module gets fast tests in the map, or is named here as having nothing worth mutating.
    trivial = {
        "__init__.py",
        "__main__.py",
        "hooks/__init__.py",
        "loaders/__init__.py",
        "models/__init__.py",
        "pipelines/__init__.py",
        "pipelines/pipeline_output.py",  # a dataclass
    }
    package = REPO / "diffusers_ruyi"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    assert modules - trivial == set(mutation.MODULE_TESTS)


def test_config_is_cosmic_ray_toml(mutation):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    command = mutation.test_command("hooks/fp8.py", REPO)
    config = tomllib.loads(mutation.cosmic_ray_config("hooks/fp8.py", command, 42.0))["cosmic-ray"]
    assert config["module-path"] == "diffusers_ruyi/hooks/fp8.py"
    assert config["timeout"] == 42.0
    assert config["distributor"]["name"] == "local"
    args = shlex.split(config["test-command"])
    assert args[1:5] == ["-m", "pytest", "-x", "-q"]
    assert "tests/hooks/test_speed_features.py" in args
    excluded = config["filters"]["operators-filter"]["exclude-operators"]
    assert excluded == mutation.EXCLUDED_OPERATORS
    pattern = re.compile("|".join(f"(?:{e})" for e in excluded))
    assert pattern.match("core/ReplaceBinaryOperator_Add_BitXor")
    assert pattern.match("core/ReplaceComparisonOperator_Lt_Is")
    assert not pattern.match("core/ReplaceBinaryOperator_Add_Sub")
    assert not pattern.match("core/ReplaceComparisonOperator_GtE_Gt")
    assert not pattern.match("core/NumberReplacer")


def test_missing_test_files_are_dropped(mutation, tmp_path):
    # An older tests/ folder (scored with --tests-dir) lacks the newer files; the command keeps the others.
    (tmp_path / "tests" / "cli").mkdir(parents=True)
    (tmp_path / "tests" / "cli" / "test_cli.py").write_text("")
    args = shlex.split(mutation.test_command("cli.py", tmp_path))
    assert "tests/cli/test_cli.py" in args
    assert not any("test_cli_effects" in a for a in args)
