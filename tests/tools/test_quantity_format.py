"""How budgets and costs read: enough significant digits, and a requested and an achievable value
that differ never read the same."""
from __future__ import annotations

import random
import textwrap

import pytest

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.passes.budgets import BOPS, LATENCY, SIZE, format_quantity
from lcpaq.tools.cli import main


@pytest.mark.parametrize(("quantity", "value", "text"), [
    (LATENCY, 0.009e-3, "0.009 ms"),  # the usual 3 decimals: no digit is lost
    (LATENCY, 0.0091234e-3, "0.009123 ms"),  # 4 significant digits
    (LATENCY, 0.01e-3, "0.010 ms"),
    (LATENCY, 2e-3, "2.000 ms"),
    (LATENCY, 12.34567e-3, "12.346 ms"),
    (SIZE, 12.88, "13 B"),  # whole bytes below 1 KiB
    (SIZE, 64 * 1024, "64.00 KiB"),
    (SIZE, 1.2345678 * 2**20, "1.235 MiB"),
    (SIZE, 123.456 * 2**20, "123.46 MiB"),
    (BOPS, 1.5e9, "1.50 GBOPs"),
    (BOPS, 1.23456e9, "1.235 GBOPs"),
    (BOPS, 999, "999 BOPs"),
])
def test_at_least_four_significant_digits(quantity, value, text) -> None:
    assert format_quantity(quantity, value) == text


@pytest.mark.parametrize(("quantity", "a", "b", "a_text", "b_text"), [
    (LATENCY, 0.0090e-3, 0.0093e-3, "0.009 ms", "0.0093 ms"),
    (LATENCY, 0.06368e-3, 0.064e-3, "0.06368 ms", "0.064 ms"),
    (LATENCY, 2.0001e-3, 2.0002e-3, "2.0001 ms", "2.0002 ms"),
    (SIZE, 12.88, 13.0, "12.9 B", "13 B"),
    (SIZE, 1.23451 * 2**20, 1.23459 * 2**20, "1.2345 MiB", "1.2346 MiB"),
    (BOPS, 1e9, 1.0000001e9, "1.00 GBOPs", "1.0000001 GBOPs"),
    (LATENCY, 1e-3, 1e-3, "1.000 ms", "1.000 ms"),  # equal values read the same
])
def test_two_values_that_differ_read_differently(quantity, a, b, a_text, b_text) -> None:
    assert format_quantity(quantity, a, versus=b) == a_text
    assert format_quantity(quantity, b, versus=a) == b_text


def test_random_close_pairs_always_read_differently() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        quantity = rng.choice([LATENCY, SIZE, BOPS])
        a = 10 ** rng.uniform(-6, 10)
        b = a * (1 + rng.choice([-1, 1]) * 10 ** rng.uniform(-9, -2))
        assert format_quantity(quantity, a, versus=b) != format_quantity(quantity, b, versus=a), (quantity, a, b)


_MODEL = textwrap.dedent("""
    import torch
    from torch import nn


    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.c1(x)).mean((2, 3)))


    def build():
        torch.manual_seed(0)
        return Two(), (torch.randn(1, 3, 8, 8),)
""")


def test_an_infeasible_latency_budget_reads_differently_from_the_smallest_achievable(capsys, tmp_path) -> None:
    """INT8 everywhere takes 0.04 + 0.0234 ms = 0.0634 ms by this hand-made table, and nothing is
    faster; latency=0.99int8 asks 0.062766 ms. Three decimals print both as 0.063 ms: the message
    must tell them apart."""
    model = tmp_path / "two.py"
    model.write_text(_MODEL)
    table = tmp_path / "t.json"
    LatencyTable("x86-host", "test", "0", "2026-11-22", 0, "two",
                 {"c1": {"fp32": 1e-4, "w8a8": 4e-5}, "fc": {"fp32": 5e-5, "w8a8": 2.34e-5}}).save(table)
    code = main(["quantize", "--model", f"{model}:build", "--budget", "latency=0.99int8", "--latency-table", str(table),
                 "--probes", "4", "--no-build", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "latency=0.99int8 asks latency <= 0.06277 ms, the smallest achievable is 0.0634 ms" in err
