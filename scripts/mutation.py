"""Mutation testing for diffusers_ruyi: break the package one small bug at a time and see whether the tests notice.

A small self-contained AST mutator (no third-party tool: mutmut and cosmic-ray both fight torch's import time and
the package's editable install). For every module of ``diffusers_ruyi/`` listed in ``MODULE_TESTS`` it

1. copies the repository (package, tests, scripts, examples, benchmarks; the fixtures are symlinked) into a scratch
   folder, so the working tree is never touched,
2. lists every mutation point of the module (comparison, arithmetic, boolean, unary, constant and keyword-argument
   mutations; docstrings and error messages are left alone),
3. samples ``--sample`` of them (seeded, so two runs mutate the same points), writes each mutant into the copy and
   runs the module's fast tests with ``pytest -x`` against it (``PYTHONPATH`` points at the copy),
4. prints one table: module, mutants, killed, survived, timeout, score (killed + timeout over mutants).

Survivors are listed with their line and the mutated expression; ``--json`` writes everything to a file.

Examples:

    python scripts/mutation.py --sample 30 --budget 1800
    python scripts/mutation.py --modules hooks/teacache.py --sample 0       # every mutant of one module
    python scripts/mutation.py --list-only --modules pipelines/controls.py  # show the mutation points

It is slow (one pytest process per mutant) and is not part of CI; see CONTRIBUTING.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field


REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "diffusers_ruyi"

# module (relative to diffusers_ruyi/) -> the fast tests that should catch a bug in it (pytest arguments).
MODULE_TESTS: dict[str, list[str]] = {
    "pipelines/pipeline_ruyi_i2v.py": [
        "tests/pipelines/test_pipeline_ruyi_i2v.py",
        "tests/pipelines/test_pipeline_behaviours.py",
        "-k",
        "not hub_id and not half_precision and not random_invalid",
    ],
    "pipelines/controls.py": [
        "tests/pipelines/test_pipeline_ruyi_i2v.py",
        "tests/pipelines/test_pipeline_behaviours.py",
        "-k",
        "not hub_id and not half_precision and not random_invalid",
    ],
    "models/transformer_ruyi.py": [
        "tests/models/test_transformer_ruyi.py",
        "tests/models/test_transformer_behaviours.py",
        "-k",
        "not layerwise_casting and not bf16 and not gradient_checkpointing",
    ],
    "hooks/teacache.py": [
        "tests/hooks/test_speed_features.py",
        "tests/hooks/test_hook_behaviours.py",
        "-k",
        "teacache",
    ],
    "hooks/enhance_a_video.py": [
        "tests/hooks/test_speed_features.py",
        "tests/hooks/test_hook_behaviours.py",
        "tests/pipelines/test_pipeline_behaviours.py",
        "-k",
        "enhance",
    ],
    "hooks/fp8.py": [
        "tests/hooks/test_speed_features.py",
        "tests/hooks/test_hook_behaviours.py",
        "-k",
        "fp8",
    ],
    "hooks/_common.py": [
        "tests/hooks/test_speed_features.py",
        "tests/hooks/test_hook_behaviours.py",
        "-k",
        "teacache or enhance or skip_offload or argument_reader or move_to",
    ],
    "loaders/lora.py": ["tests/loaders/test_lora.py", "tests/loaders/test_lora_coverage.py"],
    "loaders/original_checkpoint.py": [
        "tests/models/test_transformer_ruyi.py",
        "tests/models/test_autoencoder_kl_ruyi_slice.py",
        "tests/loaders/test_lora.py",
        "tests/loaders/test_lora_coverage.py",
        "tests/pipelines/test_pipeline_ruyi_i2v.py",
        "-k",
        "original or conversion or missing or unexpected or wrong_shape or lora or matches",
    ],
    "cli.py": ["tests/cli/test_cli.py", "tests/cli/test_cli_effects.py"],
    "tiny.py": ["tests/cli/test_cli.py", "-k", "playable"],
    "models/autoencoder_kl_ruyi.py": [
        "tests/models/test_autoencoder_kl_ruyi.py",
        "tests/models/test_autoencoder_kl_ruyi_slice.py",
        "-k",
        "not gradient_checkpointing",
    ],
}
# Modules mutated only when asked by name.
DEFAULT_SKIP: set = set()

_CMP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.MatMult: ast.Mult,
}


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    kind: str
    before: str
    after: str
    status: str = "pending"
    seconds: float = 0.0
    detail: str = field(default="", repr=False)


def _is_docstring_or_message(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    if isinstance(parent, ast.Expr):
        return True
    while parent is not None:
        if isinstance(parent, (ast.Raise, ast.JoinedStr)):
            return True
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute):
            if parent.func.attr in {"warning", "warn", "info", "debug", "error"}:
                return True
        parent = parents.get(parent)
    return False


def _mutations(tree: ast.Module) -> list[tuple[ast.AST, str, object]]:
    """Every (node, kind, payload) mutation point, in source order."""
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    points: list[tuple[ast.AST, str, object]] = []
    for node in ast.walk(tree):
        if _is_docstring_or_message(node, parents):
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _CMP_SWAP:
                    points.append((node, "compare", i))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            points.append((node, "binop", None))
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP:
            points.append((node, "augassign", None))
        elif isinstance(node, ast.BoolOp):
            points.append((node, "boolop", None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            points.append((node, "unary", None))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            points.append((node, "constant", None))
        elif isinstance(node, ast.keyword) and node.arg is not None and isinstance(parents.get(node), ast.Call):
            points.append((node, "drop_keyword", None))
        elif isinstance(node, ast.Return) and node.value is not None and not isinstance(node.value, ast.Constant):
            points.append((node, "return_none", None))
    points.sort(key=lambda p: (getattr(p[0], "lineno", 0), getattr(p[0], "col_offset", 0), p[1]))
    return points


def _apply(node: ast.AST, kind: str, payload: object) -> ast.AST:
    """The replacement node for one mutation point."""
    new = copy.deepcopy(node)
    if kind == "compare":
        new.ops[payload] = _CMP_SWAP[type(new.ops[payload])]()
    elif kind in {"binop", "augassign"}:
        new.op = _BIN_SWAP[type(new.op)]()
    elif kind == "boolop":
        new.op = ast.Or() if isinstance(new.op, ast.And) else ast.And()
    elif kind == "unary":
        return new.operand
    elif kind == "constant":
        value = new.value
        if isinstance(value, bool):
            new.value = not value
        elif isinstance(value, int):
            new.value = value + 1
        else:
            new.value = value * 1.5 if value else 1.0
    elif kind == "drop_keyword":
        return None
    elif kind == "return_none":
        new.value = ast.Constant(None)
    return new


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST | None):
        self.target, self.replacement = target, replacement

    def visit(self, node):
        if node is self.target:
            return self.replacement
        return self.generic_visit(node)


def _describe(source: str, node: ast.AST, replacement: ast.AST | None) -> tuple[str, str]:
    before = ast.get_source_segment(source, node) or ast.unparse(node)
    after = "<dropped>" if replacement is None else ast.unparse(replacement)
    if isinstance(node, ast.keyword):
        before = f"{node.arg}={ast.unparse(node.value)}"
    return " ".join(before.split())[:140], " ".join(after.split())[:140]


def _render(source: str, index: int) -> str:
    """The mutated ``source`` of mutant ``index`` (re-parsed each time, so mutants never accumulate)."""
    tree = ast.parse(source)
    node, kind, payload = _mutations(tree)[index]
    mutated = _Replace(node, _apply(node, kind, payload)).visit(tree)
    ast.fix_missing_locations(mutated)
    return ast.unparse(mutated)


def list_mutants(module: str, source: str | None = None) -> list[Mutant]:
    if source is None:
        source = (REPO / PACKAGE / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    mutants = []
    for index, (node, kind, payload) in enumerate(_mutations(tree)):
        before, after = _describe(source, node, _apply(node, kind, payload))
        mutants.append(Mutant(module, index, node.lineno, kind, before, after))
    return mutants


def _stable_sample(mutants: list[Mutant], n: int, seed: int) -> list[Mutant]:
    """``n`` mutants chosen by a hash of what they change, not their index: an edit elsewhere in the module (a new
    check, a fixed bug) leaves the choice of the other mutants alone, so before/after scores compare."""
    seen: dict[tuple[str, str, str], int] = {}
    keyed = []
    for m in mutants:
        key = (m.kind, m.before, m.after)
        seen[key] = seen.get(key, 0) + 1
        digest = hashlib.sha256(f"{seed}|{m.module}|{key}|{seen[key]}".encode()).hexdigest()
        keyed.append((digest, m))
    return [m for _, m in sorted(keyed, key=lambda t: t[0])[:n]]


def make_workspace(root: pathlib.Path) -> pathlib.Path:
    work = root / "repo"
    work.mkdir(parents=True)
    for name in (PACKAGE, "scripts", "examples", "benchmarks", "docs"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", "fixtures"))
    (work / "tests" / "fixtures").symlink_to(REPO / "tests" / "fixtures")
    for name in ("pytest.ini", "setup.py", "README.md", "ruff.toml", "mkdocs.yml", "CONTRIBUTING.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, work / name)
    return work


def _env(work: pathlib.Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def _pytest(work: pathlib.Path, args: list[str], timeout: float, threads: int) -> tuple[str, float, str]:
    existing = [a for a in args if not a.startswith("tests/") or (work / a.split("::")[0]).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *existing]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=work, env=_env(work, threads), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    tail = (proc.stdout + proc.stderr)[-2000:]
    # 0: all passed, 5: nothing collected (treated as survived: no test ran against it).
    return ("survived" if proc.returncode in (0, 5) else "killed"), time.monotonic() - start, tail


def _run_module(module: str, args: argparse.Namespace, deadline: float | None) -> list[Mutant]:
    """Every sampled mutant of one module, in its own scratch copy of the repository (a snapshot: edits made to
    the working tree meanwhile do not leak into the run)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="ruyi-mutation-"))
    try:
        work = make_workspace(root)
        imported = subprocess.run(
            [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
            cwd=root,
            env=_env(work, 1),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not imported.startswith(str(work)):
            raise RuntimeError(f"the scratch copy is not the one imported ({imported}); is PYTHONPATH overridden?")
        tests = MODULE_TESTS[module]
        target = work / PACKAGE / module
        pristine = target.read_text(encoding="utf-8")
        mutants = list_mutants(module, pristine)
        if args.sample and len(mutants) > args.sample:
            mutants = sorted(_stable_sample(mutants, args.sample, args.seed), key=lambda m: m.index)
        status, base_seconds, tail = _pytest(work, tests, args.max_timeout, args.threads)
        if status != "survived":
            print(f"[{module}] the unmutated tests do not pass; skipping\n{tail}", file=sys.stderr, flush=True)
            return []
        timeout = max(args.min_timeout, args.timeout_factor * base_seconds)
        print(f"[{module}] {len(mutants)} mutants, baseline {base_seconds:.0f}s, timeout {timeout:.0f}s", flush=True)
        for mutant in mutants:
            if deadline and time.monotonic() > deadline:
                mutant.status = "skipped"
                continue
            target.write_text(_render(pristine, mutant.index), encoding="utf-8")
            try:
                mutant.status, mutant.seconds, mutant.detail = _pytest(work, tests, timeout, args.threads)
            finally:
                target.write_text(pristine, encoding="utf-8")
            print(
                f"  {mutant.status:8s} {module}:{mutant.line} #{mutant.index} [{mutant.kind}] "
                f"{mutant.before} -> {mutant.after}",
                flush=True,
            )
        return mutants
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> list[Mutant]:
    modules = args.modules or [m for m in MODULE_TESTS if m not in DEFAULT_SKIP]
    deadline = time.monotonic() + args.budget if args.budget else None
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_run_module, module, args, deadline) for module in modules]
        per_module = [f.result() for f in futures]
    return [m for ms in per_module for m in ms]


def table(results: list[Mutant]) -> str:
    rows = ["| module | mutants | killed | survived | timeout | skipped | score |", "|---|---|---|---|---|---|---|"]
    modules = list(dict.fromkeys(m.module for m in results))
    totals = {"n": 0, "killed": 0, "survived": 0, "timeout": 0, "skipped": 0}
    for module in modules:
        ms = [m for m in results if m.module == module]
        counts = {s: sum(m.status == s for m in ms) for s in ("killed", "survived", "timeout", "skipped")}
        ran = len(ms) - counts["skipped"]
        score = (counts["killed"] + counts["timeout"]) / ran if ran else float("nan")
        rows.append(
            f"| {module} | {ran} | {counts['killed']} | {counts['survived']} | {counts['timeout']} | "
            f"{counts['skipped']} | {score:.0%} |"
        )
        totals["n"] += ran
        for key in counts:
            totals[key] += counts[key]
    if totals["n"]:
        score = (totals["killed"] + totals["timeout"]) / totals["n"]
        rows.append(
            f"| **all** | {totals['n']} | {totals['killed']} | {totals['survived']} | {totals['timeout']} | "
            f"{totals['skipped']} | {score:.0%} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", help=f"modules under {PACKAGE}/ (default: all but the VAE)")
    parser.add_argument("--sample", type=int, default=30, help="mutants per module, 0 = all (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed = same mutants)")
    parser.add_argument(
        "--budget", type=float, default=0, help="total seconds; mutants not started by then are 'skipped'"
    )
    parser.add_argument("--jobs", type=int, default=1, help="modules mutated in parallel (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per test run (default 1)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout = factor x baseline")
    parser.add_argument("--min-timeout", type=float, default=60.0)
    parser.add_argument("--max-timeout", type=float, default=900.0, help="limit for the unmutated baseline run")
    parser.add_argument("--list-only", action="store_true", help="print the mutation points and exit")
    parser.add_argument("--json", type=pathlib.Path, help="write every mutant and its status here")
    args = parser.parse_args(argv)
    for module in args.modules or []:
        if module not in MODULE_TESTS:
            parser.error(f"--modules: unknown module {module!r}; choose from {sorted(MODULE_TESTS)}")
    if args.list_only:
        for module in args.modules or [m for m in MODULE_TESTS if m not in DEFAULT_SKIP]:
            for m in list_mutants(module):
                print(f"{module}:{m.line} #{m.index} [{m.kind}] {m.before} -> {m.after}")
        return 0
    results = run(args)
    print()
    print(table(results))
    survivors = [m for m in results if m.status == "survived"]
    if survivors:
        print("\nSurvivors:")
        for m in survivors:
            print(f"- {m.module}:{m.line} #{m.index} [{m.kind}] `{m.before}` -> `{m.after}`")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
