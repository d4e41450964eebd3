import importlib.util
import math
from pathlib import Path

import torch

from erq.evaluate import evaluate

_spec = importlib.util.spec_from_file_location(
    "paired_accuracy", Path(__file__).resolve().parents[1] / "benchmarks" / "paired_accuracy.py")
paired_accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired_accuracy)


def test_per_image_hits_match_top1():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x = torch.randn(37, 8)
    y = torch.randint(0, 5, (37,))
    loader = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 37, 10)]
    r = evaluate(model, loader, "cpu", progress=False, per_image=True)
    expect = model(x).argmax(-1) == y
    assert r["hits"].dtype == torch.bool and torch.equal(r["hits"], expect)
    assert r["correct1"] == int(expect.sum())
    assert "hits" not in evaluate(model, loader, "cpu", progress=False)


def test_mcnemar_exact_against_binomial_sums():
    # b = 0, c = 6: both tails of Binomial(6, 1/2) at the extremes, 2 / 64
    assert math.isclose(paired_accuracy.mcnemar_exact(0, 6), 2 / 64)
    assert math.isclose(paired_accuracy.mcnemar_exact(2, 8),
                        2 * sum(math.comb(10, i) for i in range(3)) / 1024)
    assert paired_accuracy.mcnemar_exact(5, 5) == 1.0
    assert paired_accuracy.mcnemar_exact(0, 0) == 1.0
    assert paired_accuracy.mcnemar_exact(3, 9) == paired_accuracy.mcnemar_exact(9, 3)


def test_paired_counts_and_difference():
    a = "1100110010"
    b = "1010100011"
    r = paired_accuracy.paired(a, b)
    assert (r["only_a"], r["only_b"], r["num"]) == (2, 2, 10)
    assert r["diff"] == 0.0 and r["lo"] < 0 < r["hi"]
    r = paired_accuracy.paired("1111", "0001")
    assert r["diff"] == 75.0 and r["only_a"] == 3 and r["only_b"] == 0


def test_labels_keep_settings_apart():
    import json

    def rec(**run):
        return {"key": json.dumps(run, sort_keys=True), **run}

    base = rec(method="erq", bits="W3A4", seed=0, calib_mode="independent")
    other = rec(method="erq", bits="W3A4", seed=0, calib_mode="independent", post_gelu="channel")
    authors = rec(method="erq", bits="W3A4", seed=0, lam_head_aqer=0.1, lam_embed_factor=10.0)
    single = rec(method="gptq", bits="W3A4", seed=0, dual=False)
    labels = [paired_accuracy.label(r) for r in (base, other, authors, single)]
    assert labels[0] == "erq independent"
    assert labels[2] == "erq independent --authors-lambdas"
    assert labels[3] == "gptq --no-dual"
    assert len(set(labels)) == 4


def test_label_names_one_per_layer_lambda_alone():
    import json
    head = {"method": "erq", "bits": "W3A4", "seed": 0, "lam_head_aqer": 0.1}
    label = paired_accuracy.label({"key": json.dumps(head), **head})
    assert label == "erq independent lam_head_aqer=0.1"
