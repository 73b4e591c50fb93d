"""`python -m benchmarks.gpu --smoke`: the GPU benchmark's every path (precisions, memory
formats, torch.compile, latency, training) runs end to end on the CPU with the tiny config."""
from __future__ import annotations

import pytest

from benchmarks import gpu


def check_animate_rows(rows) -> None:
    assert [(r["variant"], r["batch"]) for r in rows] == [(v[0], b) for b in (1, 2) for v in gpu.VARIANTS]
    for row in rows:
        assert row["frames/s"] > 0 and 0 < row["p50 ms"] <= row["p95 ms"] and row["peak GiB"] > 0


def test_gpu_benchmark_smoke_animate_rows():
    result = gpu.main(["--smoke", "--no-write", "--no-training", "--budget", "3600"])
    assert result["skipped"] == [] and result["training"] == []
    check_animate_rows(result["animate"])


@pytest.mark.slow
def test_gpu_benchmark_smoke_every_row():
    result = gpu.main(["--smoke", "--no-write", "--budget", "3600"])
    assert result["skipped"] == []
    check_animate_rows(result["animate"])
    assert [r["training"] for r in result["training"]] == ["fp32", "bf16 channels_last"]
    assert all(r["it/s"] > 0 and r["peak GiB"] > 0 for r in result["training"])
