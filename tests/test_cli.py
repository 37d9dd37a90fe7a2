"""The command line: `check` passes every op, `bench` prints and saves a table (CPU case)."""

import json

from moe_ext.__main__ import main


def test_check_passes_on_cpu(capsys):
    assert main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") >= 3


def test_bench_cpu_prints_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--device", "cpu", "--model", "olmoe-1b-7b", "--tokens", "3,8",
                 "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "vs PyTorch" in out and "olmoe-1b-7b" in out
    rows = json.loads(path.read_text())["rows"]
    assert [r["tokens"] for r in rows] == [3, 8]
    assert all(r["us"] > 0 and r["floor_us"] > 0 and r["baseline_us"] > 0 for r in rows)
