"""benchmarks/bench_rope.py runs (tiny shape) and finds the two RoPEs equal bit for bit."""

import pathlib
import sys


ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_rope  # noqa: E402


def test_tiny_run_prints_one_row_per_implementation_all_equal(capsys):
    bench_rope.main(["--shapes", "tiny", "--dtypes", "float32,bfloat16,float16", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 6
    assert all(row.endswith("| yes |") for row in rows), rows


def test_a_different_rope_is_reported(monkeypatch, capsys):
    import diffusers_ruyi.models.transformer_ruyi as transformer_module

    monkeypatch.setattr(transformer_module, "_rotate_rows_into", lambda out, x, *tables: out.copy_(x))
    bench_rope.main(["--shapes", "tiny", "--dtypes", "float32", "--repeats", "1"])
    assert "| NO |" in capsys.readouterr().out
