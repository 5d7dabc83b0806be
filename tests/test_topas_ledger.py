"""The ledger beside a merged output (common/topas/ledger.py): value-blind candidates that
nest, the file a later merge reads, and what happens when it is missing or broken."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.consistency_model import Shape
from common.errors import EXIT_OK, ToolError
from common.topas.ledger import (MAX_CANDIDATES, MIN_CANDIDATES, all_candidates,
                                 candidate_threshold, ledger_path, read_ledger)
from common.topas.merge import merge_runs
from common.topas.record import read_record
from test_topas_campaign_shapes import merge, write_campaign


def test_candidates_are_value_blind_nested_and_sized_by_runs() -> None:
    elements = 10_000_000
    few, many = (candidate_threshold(elements, runs) for runs in (10, 1000))
    assert many < few
    chosen_few, chosen_many = (all_candidates(elements, t) for t in (few, many))
    assert np.isin(chosen_many, chosen_few).all()  # a merge of merges keeps the lowest
    assert abs(chosen_few.size - MAX_CANDIDATES) < 5 * MAX_CANDIDATES ** 0.5
    assert abs(chosen_many.size - elements / 4000) < 5 * (elements / 4000) ** 0.5
    assert candidate_threshold(4000, 40) >= 1 << 64  # a small grid: every bin
    assert abs(all_candidates(elements, candidate_threshold(elements, 10 ** 6)).size
               - MIN_CANDIDATES) < 5 * MIN_CANDIDATES ** 0.5


def test_a_merged_input_without_its_ledger_is_one_run(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    runs = write_campaign(tmp_path / "runs", Shape("", (100000,) * 6), 2)
    merge(runs[:3], tmp_path / "a", capsys, "--partial")
    merge(runs[3:], tmp_path / "b", capsys, "--partial")
    ledger_path(tmp_path / "a" / "Dose.csv").unlink()
    code, out, err = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "final", capsys)
    assert code == EXIT_OK, err
    assert "all 4 tested consistent" in out  # a (as one run of 300,000) and b's three
    record = read_record(tmp_path / "final" / "Dose.csv")
    assert record is not None and record.runs == 6
    # that final merge's own ledger still stands for its histories: 4 entries for 6 runs
    again = read_ledger(tmp_path / "final" / "Dose.csv", 6, 600000)
    assert again is not None and len(again.runs) == 4


def test_a_broken_ledger_is_named_with_the_fix(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = write_campaign(tmp_path / "runs", Shape("", (100000,) * 4), 3)
    merge(runs[:2], tmp_path / "a", capsys, "--partial")
    merge(runs[2:], tmp_path / "b", capsys, "--partial")
    broken = ledger_path(tmp_path / "b" / "Dose.csv")
    broken.write_bytes(b"not a ledger")
    with pytest.raises(ToolError, match=rf"{broken}: unreadable run ledger .* delete it to "
                                        "merge the file beside it as one run"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "final", plots=False)
    assert not (tmp_path / "final" / "Dose.csv").exists()


def test_a_ledger_of_other_histories_is_not_used(tmp_path: Path) -> None:
    runs = write_campaign(tmp_path / "runs", Shape("", (100000,) * 3), 4)
    merge_runs(runs, tmp_path / "a", plots=False, partial=True)
    assert read_ledger(tmp_path / "a" / "Dose.csv", 3, 300000) is not None
    assert read_ledger(tmp_path / "a" / "Dose.csv", 3, 299999) is None
