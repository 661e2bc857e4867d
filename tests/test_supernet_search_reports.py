"""What the CLI summary and the reports say about a supernet search: the strategy, proxies and finalists."""

from __future__ import annotations

import json

from autodistill_trainer.cli_summary import search_strategy_summary, strategy_text
from autodistill_trainer.report import write_results_table


def row(number, fidelity, accuracy=0.8, status="trained"):
    return {"number": number, "arch": {"hidden_size": 64}, "status": status, "state": "COMPLETE",
            "metrics": {"accuracy": accuracy, "latency": 1.0}, "params": 10, "flops": 20, "latency": 1.0,
            "duration_s": 0.1, "failure_reason": None, "worker": "h:1", "fidelity": fidelity}


def test_the_results_table_shows_each_rows_fidelity_and_counts_proxies_and_finalists(tmp_path):
    _, md = write_results_table([row(0, "proxy"), row(1, "proxy"), row(2, "final")], tmp_path)
    text = md.read_text()
    assert text.splitlines()[0].startswith("| number | status | fidelity | accuracy |")
    assert "| proxy |" in text and "| final |" in text
    assert "3 trials, 3 trained (2 with inherited supernet weights, 1 finalists)." in text


def test_a_plain_search_table_has_no_fidelity_column(tmp_path):
    plain = [{k: v for k, v in row(0, None).items() if k != "fidelity"}]
    _, md = write_results_table(plain, tmp_path)
    assert "fidelity" not in md.read_text()
    assert "1 trials, 1 trained. Latency in ms." in md.read_text()


def test_the_summary_reads_the_supernet_entry_and_says_it_in_one_line(tmp_path):
    supernet = {"proxies_evaluated": 120, "finalists_trained": 3, "space_size": 1296,
                "compute_fte": {"supernet": 3.0, "proxies": 0.2, "finalists": 0.75, "total": 3.95}, "wall_s": {}}
    (tmp_path / "search_results.json").write_text(json.dumps({"supernet": supernet}))
    search = search_strategy_summary("supernet", str(tmp_path))
    assert search["strategy"] == "supernet" and search["proxies_evaluated"] == 120
    assert strategy_text(search) == ("  strategy: supernet: 120 sub-networks evaluated in the supernet (space 1296), "
                                     "3 finalists trained on their own, compute 4.0 full-trial equivalents")
    assert search_strategy_summary("plain", str(tmp_path)) == {"strategy": "plain"}
    assert strategy_text({"strategy": "plain"}) is None
