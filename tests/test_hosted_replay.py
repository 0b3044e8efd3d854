"""Replay of hosted models' images, against fake providers on 127.0.0.1: an image sent without a seed is
"not reproducible" and nothing is sent again; one with a seed is left alone (it would cost money again)
unless --rerun-hosted, and then judged as any other, its estimate said first, kept to the budgets and
written to the spend ledger."""

import pytest
import yaml
from diffdeck.engines.record.spend import Spend, ledger_path
from fake_providers import FakeProvider
from helpers import diffdeck, one_line_error, write_models
from PIL import Image

pytestmark = pytest.mark.slow
KEY = "test-key"
ENV = {"IDEOGRAM_API_KEY": KEY, "OPENAI_API_KEY": KEY}


def test_replay_says_what_a_hosted_image_is_and_sends_nothing_unless_asked(tmp_path):
    with FakeProvider("ideogram", key=KEY) as ideogram, FakeProvider("openai", key=KEY) as openai:
        models = write_models(tmp_path, {
            "ideo": {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY",
                     "base_url": ideogram.base_url, "price_usd": 0.05},
            "gpt": {"kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY",
                    "base_url": openai.base_url, "price_usd": 0.01},
        })
        models.write_text(models.read_text() + yaml.safe_dump({"budgets": {"day_usd": 0.15}}))
        for model in ("ideo", "gpt"):
            made = diffdeck("render", "a poster saying HELLO", "--model", model, "--seed", "7", "--session", "s",
                            cwd=tmp_path, env=ENV, timeout=120)
            assert made.returncode == 0, made.stderr
        sent = len(ideogram.requests()), len(openai.requests())

        check = diffdeck("replay", "s", "--check", cwd=tmp_path, env=ENV, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert (len(ideogram.requests()), len(openai.requests())) == sent, "a replay without --rerun-hosted sends nothing"
        lines = check.stdout.splitlines()
        assert any(line.startswith("job-0001 image 0") and "not rendered again: a hosted model (--rerun-hosted" in line
                   and "about $0.05)" in line for line in lines), check.stdout
        assert any(line.startswith("job-0002 image 0")
                   and "not reproducible (hosted model without a seed)" in line for line in lines), check.stdout
        assert lines[-1].startswith("2 images, none rendered again") and "2 of hosted models not rendered again" \
            in lines[-1], lines[-1]
        assert not (tmp_path / "s" / "replay-1").exists(), "nothing rendered: no replay folder"
        seeded = diffdeck("replay", "s", "--check", "--jobs", "job-0001", cwd=tmp_path, env=ENV, timeout=120)
        assert seeded.stdout.splitlines()[-1] == "1 image, none rendered again; 1 of hosted models not rendered again"

        again = diffdeck("replay", "s", "--check", "--rerun-hosted", cwd=tmp_path, env=ENV, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (len(ideogram.requests()), len(openai.requests())) == (sent[0] + 1, sent[1] + 1)
        # $0.06 spent today and $0.06 more: $0.12 is within the day's $0.15, and $0.18 is not
        refused = diffdeck("replay", "s", "--rerun-hosted", cwd=tmp_path, env=ENV, timeout=120)
        one_line_error(refused, "the replay's 2 jobs (job-0001 to job-0002) would cost about $0.06",
                       "with $0.12 spent today", "over the day's budget of $0.15")
        assert (len(ideogram.requests()), len(openai.requests())) == (sent[0] + 1, sent[1] + 1), "refused: none sent"
    assert not (tmp_path / "s" / "replay-2").exists(), "refused: no replay folder left behind"
    assert ("rendering hosted images again: estimated cost about $0.06 (1 x $0.05, "
                                               "ideo at its price_usd in models.yaml; 1 x $0.01, gpt at its price_usd in "
                                               "models.yaml)") in refused.stdout.splitlines(), refused.stdout
    replayed = [Spend.from_line(line) for line in ledger_path().read_bytes().splitlines()][-2:]
    assert sorted((entry.session, entry.job, entry.usd) for entry in replayed) == [
        (str(tmp_path / "s" / "replay-1"), "job-0001", 0.05), (str(tmp_path / "s" / "replay-1"), "job-0002", 0.01)]
    lines = again.stdout.splitlines()
    assert any(line.startswith("job-0001 image 0") and ": identical" in line for line in lines), again.stdout
    assert any(line.startswith("job-0002 image 0") and "not reproducible (hosted model without a seed)" in line
               for line in lines), again.stdout


def test_a_hosted_image_altered_since_is_named_altered_not_unreproducible(tmp_path):
    with FakeProvider("openai", key=KEY) as openai:
        write_models(tmp_path, {"gpt": {"kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY",
                                        "base_url": openai.base_url}})
        made = diffdeck("render", "a red kite", "--model", "gpt", "--session", "s", cwd=tmp_path, env=ENV, timeout=120)
        assert made.returncode == 0, made.stderr
        png = next((tmp_path / "s" / "images").glob("*.png"))
        with Image.open(png) as image:
            image.convert("RGB").point(lambda v: 255 - v).save(png)
        check = diffdeck("replay", "s", "--check", cwd=tmp_path, env=ENV, timeout=120)
    assert check.returncode == 1, check.stdout
    assert "altered" in check.stdout and "not reproducible" not in check.stdout.splitlines()[-2], check.stdout
