"""How the benchmark scripts talk to their workers: each measurement runs in a fresh subprocess (so peak memory is
per process) that prints exactly one ``RESULT <json>`` line on stdout."""

import json
import subprocess
from typing import Dict, List, Optional


PREFIX = "RESULT "


def print_result(result: Dict) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run_worker(
    cmd: List[str], env: Optional[Dict[str, str]] = None, what: str = "worker", timeout: Optional[float] = None
) -> Dict:
    """Runs ``cmd`` and returns its RESULT; raises with the end of its output when it fails or prints none, or when
    it runs past ``timeout`` seconds (it is killed then)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"The {what} ran past its {timeout:.0f} s and was stopped: {' '.join(cmd)}") from e
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"The {what} failed (exit code {proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(PREFIX) :])
