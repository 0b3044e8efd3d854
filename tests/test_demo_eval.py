"""`diffdeck demo-eval` end to end: real worker, real renders, the scorer's verdict per attribute."""

import json

import pytest
from diffdeck.engines.demo.score import ATTRIBUTES
from helpers import diffdeck


@pytest.mark.slow
@pytest.mark.usefixtures("registry")  # its models.yaml, in tmp_path, names tiny-sdxl
def test_demo_eval_scores_every_attribute_and_fails_a_model_that_misses_the_targets(tmp_path):
    result = diffdeck("demo-eval", "--model", "tiny-sdxl", "--per-group", "2", "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # random weights draw noise
    groups = json.loads(result.stdout)
    assert set(groups) == {"trained pairs", "held-out pairs"}
    for group in groups.values():
        assert set(group["accuracy"]) == set(ATTRIBUTES)
        assert all(0 <= share <= 1 for share in group["accuracy"].values())
        assert len(group["misses"]) == 2 and all(miss["wrong"] for miss in group["misses"])


def test_demo_eval_names_bad_input(tmp_path):
    unknown = diffdeck("demo-eval", "--model", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    zero = diffdeck("demo-eval", "--per-group", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "'0' is not a whole number of at least 1" in zero.stderr
