"""`diffdeck bench gpu`: the proof script for a GPU, run end to end here at toy scale (the same code
path, tiny pipelines of the same classes) so that it cannot rot before a GPU runs it; its time budget;
its refusals of bad input."""

from __future__ import annotations

import re

import pytest
from helpers import diffdeck, one_line_error

SECTIONS = ("Pipelines", "Per image", "Isolation", "Memory budget and LRU under pressure", "Batching",
            "Offload modes and dtypes")
NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?( %|x)?$")
NO_GPU = "skipped: no GPU"


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each `## ` section's table: its rows as {column: cell}, keyed by the title up to ':' or ' ('."""
    found: dict[str, list[dict[str, str]]] = {}
    title, columns = None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title, columns = line[3:].split(":")[0].split(" (")[0], None
            found[title] = []
        elif line.startswith("| ") and title:
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            if columns is None:
                columns = cells
            else:
                found[title].append(dict(zip(columns, cells)))
    return found


def numbers(row: dict[str, str], *columns: str) -> list[float]:
    """The cells' leading numbers; an AssertionError naming the cell that has none."""
    values = []
    for column in columns:
        cell = row[column].split(" (")[0].split(" / ")[0]
        assert NUMBER.match(cell), f"{column}: {row[column]!r} in {row}"
        values.append(float(cell.split()[0].rstrip("x")))
    return values


@pytest.mark.slow
def test_the_toy_run_measures_every_section_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    result = diffdeck("bench", "gpu", "--toy", "--out", str(out), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = out.read_text()
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC$", document, re.M)
    assert re.search(r"^- versions: diffdeck \S+, torch \S+.*diffusers \S+, transformers \S+", document, re.M)
    assert "left out for the time budget" not in document and "| failed: " not in document and "| cut: " not in document
    found = tables(document)
    assert tuple(found) == SECTIONS
    assert [row["family"] for row in found["Pipelines"]] == ["sd15", "sdxl", "sd35m", "flux"]
    for row in found["Pipelines"]:
        assert numbers(row, "weights GB", "built in s")[0] > 0 and row["dtype"] == "float32"

    per_image = found["Per image"]
    assert [row["family"] for row in per_image] == ["sd15", "sdxl", "sd35m", "flux"]
    for row in per_image:
        bare, ours, _, bare_load, our_load, bare_peak, our_peak = numbers(
            row, "bare s/image", "diffdeck s/image", "diffdeck/bare (paired)", "load s: bare", "load s: diffdeck",
            "peak torch GB: bare", "peak torch GB: diffdeck")
        assert min(bare, ours, bare_load, our_load, bare_peak, our_peak) > 0, row
        assert re.fullmatch(r"[\d.]+ \([\d.]+\)", row["load s: diffdeck"]), row  # the worker's own load in brackets
        assert row["peak NVML GB: bare"] == row["peak NVML GB: diffdeck"] == NO_GPU

    in_one, workers = found["Isolation"]
    assert in_one["side"] == "in one process" and workers["side"] == "diffdeck workers"
    assert in_one["images made"] == workers["images made"] == "2/2"
    assert numbers(workers, "evictions (models dropped)")[0] >= 1  # the budget holds one of the two at a time
    for row in (in_one, workers):
        numbers(row, "s/image", "peak torch GB")
        assert row["OOM errors"] == row["peak NVML GB (a process)"] == NO_GPU
    assert in_one["reserved - allocated GB (max)"] == NO_GPU

    (lru,) = found["Memory budget and LRU under pressure"]
    done, failed, evictions, loads = numbers(lru, "done", "failed", "evictions", "loads")
    assert (done, failed) == (len(lru["queue"].split()), 0) and evictions >= 1 and loads >= 1
    assert lru["OOM errors"] == lru["evictions before any OOM"] == NO_GPU

    batching = found["Batching"]
    assert [row["family"] for row in batching] == ["sd15", "sdxl"]
    for row in batching:
        numbers(row, "one call each: images/s", "batched: images/s", "gain", "peak torch GB: one / batched")
        assert row["pixels"].startswith(("identical", "differ: ")), row
    assert len(re.findall(r"^- (sd15|sdxl) at 64x64, \d images: [\d.]+x", document, re.M)) == 2  # the verdicts

    offload = {(row["dtype"], row["offload"]): row for row in found["Offload modes and dtypes"]}
    assert offload[("auto", "model")]["loaded as"] == offload[("auto", "sequential")]["loaded as"] == NO_GPU
    for (dtype, _), row in offload.items():
        if row["loaded as"] != NO_GPU:
            assert row["loaded as"] == {"auto": "float32"}.get(dtype, dtype)  # auto: what the worker loads on a CPU
            numbers(row, "load s", "s/image", "peak torch GB")
    assert [key for key, row in offload.items() if row["loaded as"] != NO_GPU] == [
        ("auto", "none"), ("float32", "none"), ("bfloat16", "none")]


def test_a_spent_time_budget_skips_every_section_and_names_what_it_left_out(tmp_path):
    result = diffdeck("bench", "gpu", "--toy", "--budget-s", "0", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    found = tables(result.stdout)
    assert tuple(found) == SECTIONS
    for title, rows in found.items():
        assert rows and all("skipped: time budget spent" in row.values() or NO_GPU in row.values()
                            for row in rows), (title, rows)
    left_out = re.search(r"^- left out for the time budget: (.*)$", result.stdout, re.M)
    assert left_out and "Per image (sd15, sdxl, sd35m, flux)" in left_out[1] and "Batching (sd15, sdxl)" in left_out[1]


def test_bad_families_and_an_unwritable_table_are_refused_before_anything_runs(tmp_path):
    result = diffdeck("bench", "gpu", "--families", "sdxl,sd4", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "'sd4'" in result.stderr and "sd15, sdxl, sd35m, flux" in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
    one_line_error(diffdeck("bench", "gpu", "--out", str(tmp_path / "nowhere" / "gpu.md"), cwd=tmp_path, timeout=60),
                   "--out", "nowhere")
