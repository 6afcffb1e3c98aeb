"""Mutation testing for diffusers_ruyi with cosmic-ray: break the package one small bug at a time and see whether the
tests notice.

A thin driver around `cosmic-ray <https://cosmic-ray.readthedocs.io>`_ (``pip install -e ".[dev]"``). For every module
of ``diffusers_ruyi/`` listed in ``MODULE_TESTS`` it

1. copies the repository (package, tests, scripts, examples, benchmarks; the fixtures are symlinked) into a scratch
   folder: cosmic-ray rewrites the mutated file in place, so it never runs in a working tree,
2. writes that module's cosmic-ray config there (``--print-config`` shows it): ``module-path`` = the module,
   ``test-command`` = ``python -m pytest -x -q`` over the module's fast tests, ``timeout`` = ``--timeout-factor``
   times the unmutated run, the ``local`` distributor, and an operator filter (``EXCLUDED_OPERATORS``),
3. runs ``cosmic-ray init`` and ``cr-filter-operators``, then keeps a seeded sample of ``--sample`` mutants and marks
   the others skipped in the session database (the sample is chosen by a hash of what each mutant changes, not by
   its position, so an edit elsewhere in the module leaves the choice of the other mutants alone and runs before and
   after a change compare),
4. runs ``cosmic-ray exec`` with ``PYTHONPATH`` on the scratch copy (one pytest process per mutant) and stops it at
   ``--budget``,
5. prints one table: module, mutants, killed, survived, timeout, incompetent, score = (killed + timeout) / (killed +
   timeout + survived), and every survivor with its id and diff.

Examples:

    python scripts/mutation.py --sample 15 --budget 3600
    python scripts/mutation.py --modules hooks/teacache.py --sample 0             # every mutant of one module
    python scripts/mutation.py --modules hooks/teacache.py --mutant 3fa2c1d0       # re-run one mutant by its id
    python scripts/mutation.py --modules pipelines/controls.py --list-only         # the sampled mutants, not run
    python scripts/mutation.py --modules cli.py --print-config                    # the cosmic-ray config
    python scripts/mutation.py --tests-dir /tmp/old-tests --sample 15              # score another tests/ folder

It is slow and is not part of CI; see CONTRIBUTING.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass


REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "diffusers_ruyi"

_PIPELINE_TESTS = [
    "tests/pipelines/test_pipeline_ruyi_i2v.py",
    "tests/pipelines/test_pipeline_behaviours.py",
    "tests/pipelines/test_pipeline_mutants.py",
    "tests/pipelines/test_pipeline_inputs.py",
    "tests/pipelines/test_pipeline_realfmt.py",
    "tests/pipelines/test_pipeline_first_run.py",  # progress bars, first-run messages, hub errors
    "-k",
    "not hub_id and not half_precision and not random_invalid",
]
_HOOK_TESTS = [
    "tests/hooks/test_speed_features.py",
    "tests/hooks/test_hook_behaviours.py",
    "tests/hooks/test_hook_mutants.py",
    "tests/hooks/test_hook_config_validation.py",
]

# module (relative to diffusers_ruyi/) -> the fast tests that should catch a bug in it (pytest arguments; files
# that do not exist in the scratch copy are dropped, so an older tests/ folder can be scored with the same map).
MODULE_TESTS: dict[str, list[str]] = {
    # `_check_components_fit` (components of another checkpoint) is tested where the published layout loads.
    "pipelines/pipeline_ruyi_i2v.py": ["tests/loaders/test_published_format.py", *_PIPELINE_TESTS],
    # The control embeddings' file checks are tested where the published layout loads.
    "pipelines/controls.py": ["tests/loaders/test_published_format.py", *_PIPELINE_TESTS],
    "models/transformer_ruyi.py": [
        "tests/models/test_transformer_ruyi.py",
        "tests/models/test_transformer_mutants.py",
        "tests/models/test_transformer_memory.py",
        "tests/models/test_model_input_validation.py",
        "tests/loaders/test_lora.py::test_fused_qkv_projections_and_lora_refuse_each_other",
        "tests/hooks/test_speed_features.py::test_context_parallel_ulysses_on_cpu",
        "tests/hooks/test_speed_features.py::test_enhance_a_video_matches_original",  # the processor applies it
        "-k",
        "not layerwise_casting and not bf16 and not gradient_checkpointing",
    ],
    # Both refuse context parallelism: its test is named after neither.
    "hooks/teacache.py": [*_HOOK_TESTS, "tests/hooks/test_hook_interplay.py", "-k", "teacache or context_parallel"],
    "hooks/enhance_a_video.py": [
        *_HOOK_TESTS,
        "tests/pipelines/test_pipeline_behaviours.py",
        "-k",
        "enhance or context_parallel",
    ],
    "hooks/fp8.py": [*_HOOK_TESTS, "-k", "fp8"],
    "hooks/_common.py": [
        *_HOOK_TESTS,
        # `remove_hook_keeping_later_ones` with a hook registered after the removed one (FasterCache's `new_forward`)
        "tests/hooks/test_hook_interplay.py::test_removing_enhance_a_video_keeps_a_faster_cache_enabled_after_it",
        "-k",
        "teacache or enhance or skip_offload or move_to or context_parallel",
    ],
    "hooks/skip_offload.py": [*_HOOK_TESTS, "-k", "skip_offload"],
    "hooks/diffusers_caches.py": [*_HOOK_TESTS, "-k", "cache"],
    "loaders/lora.py": [
        "tests/loaders/test_lora.py",
        "tests/loaders/test_lora_coverage.py",
        "tests/loaders/test_lora_original_exact.py",
        "tests/loaders/test_loader_mutants.py",
        "tests/loaders/test_lora_export.py",
        # Hot-swaps into padded ranks: each layer's `lora_alpha`, which `set_adapters` scales from
        "tests/loaders/test_lora_lifecycle.py",
    ],
    "loaders/original_checkpoint.py": [
        "tests/loaders/test_loader_mutants.py",
        "tests/loaders/test_lora_export.py",
        "tests/loaders/test_published_format.py",
        "tests/models/test_transformer_ruyi.py",
        "tests/models/test_autoencoder_kl_ruyi_slice.py",
        "tests/loaders/test_lora.py",
        "tests/loaders/test_lora_coverage.py",
        "tests/pipelines/test_pipeline_ruyi_i2v.py",
        "tests/pipelines/test_pipeline_first_run.py",
        "-k",
        "original or conversion or missing or unexpected or wrong_shape or lora or matches or dtype or hub or mistyped or header",
    ],
    "loaders/model_loading.py": [
        "tests/loaders/test_save_load_checks.py",  # stale shard indexes, unknown loading options
        "tests/loaders/test_loading_options.py",
        "tests/loaders/test_from_single_file.py",
        "tests/pipelines/test_pipeline_realfmt.py",
        "tests/models/test_transformer_ruyi.py",
        "tests/models/test_autoencoder_kl_ruyi.py",
        "-k",
        "options or missing or unexpected or original or bf16 or from_single_file",
    ],
    "loaders/original_pipeline.py": [
        "tests/loaders/test_save_load_checks.py",  # a truncated CLIP `.bin` is named before any model loads
        "tests/loaders/test_loader_mutants.py",
        "tests/loaders/test_published_format.py",
        "tests/loaders/test_loading_options.py",
        "tests/pipelines/test_pipeline_realfmt.py",
        "tests/pipelines/test_pipeline_ruyi_i2v.py::test_original_layout_transformers_spelling_and_bad_folder",
    ],
    "_images.py": [
        "tests/test_images.py",  # EXIF orientation of 8- and 16-bit files
        "tests/pipelines/test_pipeline_inputs.py",
        "tests/cli/test_cli.py::test_32_bit_images_are_refused_before_loading",
        "tests/cli/test_cli.py::test_a_16_bit_grayscale_png_is_read_as_its_picture",
    ],
    "_validation.py": [
        "tests/test_validation.py",
        "tests/models/test_model_input_validation.py",
        "tests/hooks/test_hook_config_validation.py",
        # `schedule_problem`'s dry run (NaN of DPM++ at 999 steps, IndexError of DDIM/DDPM at 1000)
        "tests/pipelines/test_pipeline_ruyi_i2v.py::test_a_schedule_that_would_fail_mid_run_is_refused_before_any_model",
        # `check_int`'s `maximum`: only the long-video planner passes one (`num_frames` <= `MAX_VIDEO_FRAMES`)
        "tests/pipelines/test_long_video.py::test_plan_of_a_long_video",
        "tests/pipelines/test_long_video.py::test_the_longest_video_is_planned",
        # `check_casting_hooks_fit`: a model cast after its fp8 / layerwise-casting storage was set
        "tests/hooks/test_hook_interplay.py::test_a_model_cast_after_its_storage_was_set_is_refused_at_the_call",
    ],
    "cli.py": [
        "tests/cli/test_cli.py",
        "tests/cli/test_cli_effects.py",
        "tests/cli/test_cli_mutants.py",
        "tests/cli/test_cli_long_video.py",
    ],
    "tiny.py": [
        "tests/test_tiny.py",
        "tests/cli/test_cli.py",
        "tests/cli/test_cli_mutants.py",
        "-k",
        "tiny or playable",  # -k matches substrings: "tiny" covers the tiny_random tests
    ],
    "models/autoencoder_kl_ruyi.py": [
        "tests/models/test_autoencoder_kl_ruyi.py",
        "tests/models/test_autoencoder_kl_ruyi_slice.py",
        "tests/models/test_model_input_validation.py",
    ],
    "long_video.py": ["tests/pipelines/test_long_video.py", "tests/cli/test_cli_long_video.py"],
    "_registration.py": [
        "tests/test_registration.py",
        "tests/pipelines/test_pipeline_ruyi_i2v.py",
        "-k",
        "loads_like_any_diffusers or whatever_the_import_order or registering or finder",
    ],
    "_logging.py": [
        "tests/test_logging.py",
        "tests/pipelines/test_pipeline_realfmt.py",
        "tests/loaders/test_loading_options.py",
        "-k",
        "logging or float16_upcasts or diffusers_warning or keeps_diffusers_warning",
    ],
}

# cosmic-ray operators left out (regular expressions on the operator name): replacements nobody would write by
# mistake and that the interpreter rejects at once (``a + b`` -> ``a >> b``, ``x < 1`` -> ``x is 1``), and ``|``
# as a source, which is nearly always a type union in an annotation that ``from __future__ import annotations``
# never evaluates. What is left: + - * / swapped among themselves, every comparison among == != < <= > >=, is/is
# not, in/not in, and/or, not added or removed, True/False, numbers +-1, break/continue, zero-iteration loops,
# exception types and removed decorators.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_\w+_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceBinaryOperator_(Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)_",
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Eq|NotEq|Lt|LtE|Gt|GtE)$",
    r"core/ReplaceUnaryOperator_\w+_(Invert|UAdd)$",
]


@dataclass
class Mutant:
    module: str
    id: str
    operator: str
    line: int
    definition: str
    text: str
    status: str = "pending"
    killed_by: str = ""
    diff: str = ""


def make_workspace(root: pathlib.Path, tests_dir: pathlib.Path) -> pathlib.Path:
    """A copy of the repository to mutate; ``tests_dir`` replaces ``tests/`` (its fixtures come from this tree)."""
    work = root / "repo"
    work.mkdir(parents=True)
    for name in (PACKAGE, "scripts", "examples", "benchmarks", "docs"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(tests_dir, work / "tests", ignore=shutil.ignore_patterns("__pycache__", "fixtures"))
    (work / "tests" / "fixtures").symlink_to(REPO / "tests" / "fixtures")
    for name in ("pytest.ini", "setup.py", "README.md", "ruff.toml", "mkdocs.yml", "CONTRIBUTING.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, work / name)
    return work


def _env(work: pathlib.Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def test_command(module: str, work: pathlib.Path) -> str:
    args = [a for a in MODULE_TESTS[module] if not a.startswith("tests/") or (work / a.split("::")[0]).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
    return shlex.join(cmd)


def cosmic_ray_config(module: str, command: str, timeout: float) -> str:
    """The cosmic-ray TOML for one module (paths relative to the scratch copy, where cosmic-ray runs)."""
    excluded = ", ".join(json.dumps(e) for e in EXCLUDED_OPERATORS)
    return (
        "[cosmic-ray]\n"
        f'module-path = "{PACKAGE}/{module}"\n'
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
        "\n[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = [{excluded}]\n"
    )


def _cosmic_ray(*args: str, cwd: pathlib.Path, env: dict[str, str]) -> None:
    subprocess.run(list(args), cwd=cwd, env=env, check=True, capture_output=True, text=True)


def _tool(name: str) -> str:
    """A cosmic-ray console script next to this Python (``cosmic-ray``, ``cr-filter-operators``)."""
    local = pathlib.Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _sample(work: pathlib.Path, module: str, db_path: pathlib.Path, args: argparse.Namespace) -> dict[str, Mutant]:
    """Keep ``args.sample`` mutants (or those named by ``--mutant``), mark the others skipped in the session
    database; return the kept ones by job id, in source order."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    lines = (work / PACKAGE / module).read_text(encoding="utf-8").splitlines()

    def text(spec) -> str:
        """The source lines the mutation touches, whitespace collapsed (its identity, with the operator)."""
        return " ".join(" ".join(lines[spec.start_pos[0] - 1 : spec.end_pos[0]]).split())

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        seen: dict[tuple[str, str, str], int] = {}
        keyed = []
        # Within one operator, `occurrence` follows the source; the database's own order does not.
        items = sorted(
            db.pending_work_items, key=lambda it: (it.mutations[0].operator_name, it.mutations[0].occurrence)
        )
        for item in items:
            spec = item.mutations[0]
            key = (spec.operator_name, spec.definition_name or "", text(spec))
            seen[key] = seen.get(key, 0) + 1
            digest = hashlib.sha256(f"{args.seed}|{module}|{key}|{seen[key]}".encode()).hexdigest()
            mutant = Mutant(module, digest[:8], spec.operator_name.removeprefix("core/"), spec.start_pos[0], *key[1:])
            keyed.append((digest, item.job_id, mutant))
        keyed.sort(key=lambda t: t[0])
        if args.mutant:
            kept = [t for t in keyed if t[2].id in args.mutant]
        elif args.sample:
            kept = keyed[: args.sample]
        else:
            kept = keyed
        kept_jobs = {job for _, job, _ in kept}
        skip = WorkResult(output="not in the sample", worker_outcome=WorkerOutcome.SKIPPED)
        db.set_multiple_results([job for _, job, _ in keyed if job not in kept_jobs], skip)
    return {job: m for _, job, m in sorted(kept, key=lambda t: (t[2].line, t[2].operator))}


def _results(db_path: pathlib.Path, mutants: dict[str, Mutant]) -> None:
    """Fill each mutant's status and diff from the session database (``mutants`` is keyed by job id)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        for job_id, result in db.results:
            mutant = mutants.get(job_id)
            if mutant is None or result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome in (WorkerOutcome.EXCEPTION, WorkerOutcome.ABNORMAL, WorkerOutcome.NO_TEST):
                mutant.status = "incompetent"
            elif result.test_outcome == TestOutcome.SURVIVED:
                mutant.status = "survived"
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                mutant.status = "incompetent"
            else:
                mutant.status = "timeout" if result.output == "timeout" else "killed"
            failed = [
                line.split(" - ")[0]
                for line in (result.output or "").splitlines()
                if line.startswith(("FAILED", "ERROR"))
            ]
            mutant.killed_by = failed[0] if failed else ("timeout" if result.output == "timeout" else "")
            mutant.diff = "\n".join(
                line
                for line in (result.diff or "").splitlines()
                if line[:1] in "+-" and line[:3] not in ("+++", "---")
            )


_ROOTS: set[pathlib.Path] = set()  # the scratch copies in use, cleaned up on Ctrl-C / SIGTERM


def _kill_under(root: pathlib.Path) -> None:
    """Kill what still runs in the scratch copy: cosmic-ray and the pytest it started in a session of its own."""
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            inside = pathlib.Path(os.readlink(proc / "cwd")).is_relative_to(root)
        except OSError:
            continue
        if inside and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _run_module(module: str, args: argparse.Namespace, deadline: float | None) -> list[Mutant]:
    """The sampled mutants of one module, in its own scratch copy of the repository."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="ruyi-mutation-"))
    _ROOTS.add(root)
    try:
        work = make_workspace(root, args.tests_dir)
        env = _env(work, args.threads)
        imported = subprocess.run(
            [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not imported.startswith(str(work)):
            raise RuntimeError(f"the scratch copy is not the one imported ({imported}); is PYTHONPATH overridden?")
        command = test_command(module, work)
        config, db_path = work / "mutation.toml", root / "session.sqlite"
        config.write_text(cosmic_ray_config(module, command, args.max_timeout), encoding="utf-8")
        _cosmic_ray(_tool("cosmic-ray"), "init", str(config), str(db_path), cwd=work, env=env)
        _cosmic_ray(_tool("cr-filter-operators"), str(db_path), str(config), cwd=work, env=env)
        mutants = _sample(work, module, db_path, args)
        if args.list_only or not mutants:
            return list(mutants.values())

        start = time.monotonic()
        base = subprocess.run(
            shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=args.max_timeout
        )
        base_seconds = time.monotonic() - start
        if base.returncode != 0:
            tail = (base.stdout + base.stderr)[-2000:]
            print(f"[{module}] the unmutated tests do not pass; skipping\n{tail}", file=sys.stderr, flush=True)
            return []
        timeout = max(args.min_timeout, args.timeout_factor * base_seconds)
        config.write_text(cosmic_ray_config(module, command, timeout), encoding="utf-8")
        print(f"[{module}] {len(mutants)} mutants, baseline {base_seconds:.0f}s, timeout {timeout:.0f}s", flush=True)

        exec_cmd = [_tool("cosmic-ray"), "exec", str(config), str(db_path)]
        proc = subprocess.Popen(exec_cmd, cwd=work, env=env, start_new_session=True)
        try:
            proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # out of budget: what is not done stays "pending" and is reported as skipped
        finally:
            _kill_under(root)
        _results(db_path, mutants)
        for mutant in mutants.values():
            if mutant.status == "pending":
                mutant.status = "skipped"
        return list(mutants.values())
    finally:
        _kill_under(root)
        shutil.rmtree(root, ignore_errors=True)
        _ROOTS.discard(root)


def run(args: argparse.Namespace, done: list[Mutant]) -> None:
    """Mutates every module; ``done`` grows as modules finish (so an interrupted run still reports them)."""
    modules = args.modules or list(MODULE_TESTS)
    deadline = time.monotonic() + args.budget if args.budget else None
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_run_module, module, args, deadline) for module in modules]
        for future in concurrent.futures.as_completed(futures):
            done.extend(future.result())


STATUSES = ("killed", "survived", "timeout", "incompetent", "skipped")


def table(results: list[Mutant]) -> str:
    """One markdown row per module and a total: score = (killed + timeout) / (killed + timeout + survived)."""
    rows = [
        "| module | mutants | killed | survived | timeout | incompetent | skipped | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = {
        module: [m for m in results if m.module == module] for module in dict.fromkeys(m.module for m in results)
    }
    if len(groups) > 1:
        groups["**all**"] = results
    for module, ms in groups.items():
        n = {s: sum(m.status == s for m in ms) for s in STATUSES}
        ran = n["killed"] + n["timeout"] + n["survived"]
        score = f"{(n['killed'] + n['timeout']) / ran:.0%}" if ran else "-"
        rows.append(
            f"| {module} | {len(ms) - n['skipped']} | {n['killed']} | {n['survived']} | {n['timeout']} | "
            f"{n['incompetent']} | {n['skipped']} | {score} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", help=f"modules under {PACKAGE}/ (default: all)")
    parser.add_argument("--sample", type=int, default=15, help="mutants per module, 0 = all (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed = same mutants)")
    parser.add_argument(
        "--mutant",
        nargs="*",
        default=[],
        help="run only these mutant ids (from a previous table; pass its --seed too, ids depend on it)",
    )
    parser.add_argument("--budget", type=float, default=0, help="total seconds; mutants not run by then: skipped")
    parser.add_argument("--jobs", type=int, default=1, help="modules mutated in parallel (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per test run (default 1)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout = factor x baseline")
    parser.add_argument("--min-timeout", type=float, default=60.0)
    parser.add_argument("--max-timeout", type=float, default=900.0, help="limit for the unmutated baseline run")
    parser.add_argument(
        "--tests-dir", type=pathlib.Path, default=REPO / "tests", help="the tests/ folder to score (default: this one)"
    )
    parser.add_argument("--list-only", action="store_true", help="print the sampled mutants, run nothing")
    parser.add_argument("--print-config", action="store_true", help="print each module's cosmic-ray config")
    parser.add_argument("--json", type=pathlib.Path, help="write every mutant and its status here")
    args = parser.parse_args(argv)
    for module in args.modules or []:
        if module not in MODULE_TESTS:
            parser.error(f"--modules: unknown module {module!r}; choose from {sorted(MODULE_TESTS)}")
    args.tests_dir = args.tests_dir.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so each module's cleanup runs
    if args.print_config:
        for module in args.modules or list(MODULE_TESTS):
            print(f"# {module}\n{cosmic_ray_config(module, test_command(module, REPO), args.min_timeout)}")
        return 0
    results: list[Mutant] = []
    try:
        run(args, results)
    except (KeyboardInterrupt, SystemExit):
        for root in list(_ROOTS):
            _kill_under(root)
            shutil.rmtree(root, ignore_errors=True)
        print("\ninterrupted: the modules that finished", file=sys.stderr)
        report(results, args)
        os._exit(130)  # the module threads are still waiting on processes that are gone
    if args.list_only:
        for m in results:
            print(f"{m.id} {m.module}:{m.line} {m.operator} in {m.definition or '<module>'}: {m.text}")
        return 0
    report(results, args)
    return 0


def report(results: list[Mutant], args: argparse.Namespace) -> None:
    order = list(args.modules or MODULE_TESTS)
    results.sort(key=lambda m: (order.index(m.module) if m.module in order else len(order), m.line))
    print()
    print(table(results))
    survivors = [m for m in results if m.status == "survived"]
    if survivors:
        print("\nSurvivors:")
        for m in survivors:
            print(f"- {m.id} {m.module}:{m.line} {m.operator} in {m.definition or '<module>'}")
            print("    " + m.diff.replace("\n", "\n    "))
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
