"""GPU memory and timing: per GPU a memory bar with its recent history, utilisation,
temperature and power; per worker its model, state and memory; the running job's step rate and
the last job's breakdown. Without a GPU it says so and shows CPU and RAM. Where the engine has
several devices, each gets a block of its own: its memory, its workers and the job it runs."""

from __future__ import annotations

import math

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.events import render_parts
from diffdeck.engines.core.text import visible
from diffdeck.tui.workbench_state import Board, DeviceRow, JobRow, pressure
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

GIB = 2**30


class GpuPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="devices")
        yield Static(id="memory-history")
        yield Static(id="workers")
        yield Static(id="timing")

    board: Board | None = None

    def on_resize(self) -> None:
        if self.board is not None and self.board.telemetry is not None:  # the bars are drawn to the width
            self.show(self.board)

    def show(self, board: Board) -> None:
        self.board = board
        sample = board.telemetry
        if sample is None:
            self.query_one("#devices", Static).update("waiting for the first sample…")
            return
        gpus = sample.get("gpus")
        width = self.content_size.width or 40
        several = board.several_devices  # a block each, with its workers and job: no room for a history
        self.query_one("#memory-history").display = self.query_one("#workers").display = not several
        if several:
            blocks = [device_block(device, board, sample, self.app.theme_variables, width)
                      for device in board.devices.values()]
            self.query_one("#devices", Static).update(Text("\n").join(blocks))
        else:
            self.query_one("#devices", Static).update(devices_text(sample, self.app.theme_variables, width))
            history = board.memory_history.get(0) if gpus else board.ram_history
            self.query_one("#memory-history", Static).update(sparkline(history or (), width))
            self.query_one("#workers", Static).update(workers_text(sample, board))
        self.query_one("#timing", Static).update(timing_text(board, rates=not several))


SPARKS = " ▁▂▃▄▅▆▇█"


def sparkline(fractions, width: int = 40) -> Text:
    """Memory use over the last samples, on a fixed 0-100 % scale (so a flat line means flat use)."""
    recent = list(fractions)[-width:]
    return Text("".join(SPARKS[min(8, math.ceil(f * 8))] for f in recent), style="dim")


PRESSURE_COLOURS = {"pressure-ok": "green", "pressure-high": "yellow", "pressure-critical": "red"}


def memory_bar(used: int, total: int, label: str, colours: dict[str, str], width: int) -> Text:
    """A bar coloured by pressure, and the pressure in words when it is not ok; `width` columns
    for the whole line."""
    fraction = used / total if total else 0.0
    level = pressure(fraction)
    colour = colours.get(f"pressure-{level}", PRESSURE_COLOURS[f"pressure-{level}"])
    figures = f" {used / GIB:.1f}/{total / GIB:.1f} GiB"
    bar = max(4, min(30, width - len(label) - 1 - len(figures)))
    filled = round(bar * fraction)
    text = Text(f"{label} ")
    text.append("█" * filled, style=colour)
    text.append("░" * (bar - filled), style="dim")
    text.append(figures)
    if level != "ok":
        text.append(f"  memory {level}", style=f"bold {colour}")
    return text


def device_block(device: DeviceRow, board: Board, sample: dict, colours: dict[str, str], width: int) -> Text:
    """One device of several: its name, its memory (a GPU's as NVML measures it; a fake one's or
    the CPU's: its workers' against its budget), each worker, and what the busy one renders."""
    out = Text(visible(f"{device.tag} {device.name}"), style="bold")
    measured = next((gpu for gpu in sample.get("gpus") or () if device.gpu and not device.fake and (
        gpu.get("uuid") == device.uuid if gpu.get("uuid") else gpu["index"] == device.index)), None)
    workers, jobs = device.workers(board), {row.spec.get("model"): row for row in device.jobs(board)}
    if measured:
        out.append("\n")
        out.append_text(memory_bar(measured["memory_used"], measured["memory_total"], "mem", colours, width))
    elif device.budget_gb:
        memory = {w["pid"]: w.get("gpu_memory") or w.get("rss") or 0 for w in sample.get("workers") or ()}
        used = sum(memory.get(pid, 0) for _state, pid in workers.values())
        out.append("\n")
        out.append_text(memory_bar(used, int(device.budget_gb * 1e9), "mem", colours, width))
    for model, (state, _pid) in workers.items():
        job = jobs.get(model)
        doing = f" {job.id.removeprefix('job-')}" + (f" {job.it_s:.1f} it/s" if job.it_s else "") if job else ""
        out.append("\n" + visible(f" {model} {'busy' if job and state == 'warm' else state}{doing}"))
    if not workers:
        out.append("\n no worker", style="dim")
    return out


def devices_text(sample: dict, colours: dict[str, str], width: int) -> Text:
    out = Text()
    gpus = sample.get("gpus")
    if not gpus:
        out.append("no GPU — CPU", style="bold")
        out.append(f"  CPU {sample.get('cpu_percent', 0):.0f} %\n")
        out.append_text(memory_bar(sample.get("ram_used", 0), sample.get("ram_total", 0), "RAM", colours, width))
        return out
    for gpu in gpus:
        out.append(visible(f"GPU {gpu['index']} {gpu['name']}") + "\n", style="bold")
        out.append_text(memory_bar(gpu["memory_used"], gpu["memory_total"], "mem", colours, width))
        facts = [f"util {gpu['utilization']} %" if gpu.get("utilization") is not None else None,
                 f"{gpu['temperature']} °C" if gpu.get("temperature") is not None else None,
                 f"{gpu['power_w']:.0f} W" if gpu.get("power_w") is not None else None]
        out.append("\n" + "  ".join(f for f in facts if f) + "\n")
    return out


def workers_text(sample: dict, board: Board) -> Text:
    out = Text()
    workers = sample.get("workers") or []
    if not workers:
        return Text("no worker running; the first render starts one", style="dim")
    for w in workers:
        state = {"busy": "busy", "idle": "idle", "starting": "loading"}.get(w["state"], w["state"])
        rss = f"RSS {w['rss'] / GIB:.2f} GiB" if w.get("rss") is not None else ""
        gpu = f"  GPU {w['gpu_memory'] / GIB:.2f} GiB" if w.get("gpu_memory") is not None else ""
        out.append(visible(f"{w['model']:<12} {state:<8} {rss}{gpu}") + "\n")
    return out


def timing_text(board: Board, rates: bool = True) -> Text:
    """Money spent on hosted models, the running jobs' step rates (unless the device blocks
    show them) and the last job's breakdown."""
    running = board.running()
    out = spend_text(board, running)
    for row in running if rates else ():
        if row.it_s:
            out.append(visible(f"{row.id}: {row.it_s:.1f} it/s") + "\n")
    last = board.jobs.get(board.last_done) if board.last_done else None
    if last:
        out.append_text(breakdown(last))
    return out


def spend_text(board: Board, running: list[JobRow]) -> Text:
    """Money on hosted models: each running job's estimate (and what it has cost so far), the
    session's spend, the day's and what its budget leaves; nothing where nothing is paid for."""
    running_costs = [line for row in running if (line := running_cost(row, board.estimate_of(row)))]
    total, day = board.spent(), board.day
    if not (total or running_costs or (day is not None and (day.today_usd or day.budget_usd is not None))):
        return Text()
    lines = [*running_costs, f"spent {total.text()} this session"]
    if day is not None:
        left = "" if day.budget_usd is None else \
            f" of {usd(day.budget_usd)}, {usd(max(0.0, day.budget_usd - day.today_usd))} left"
        lines.append(f"today {usd(day.today_usd)}{left}")
    return Text("".join(visible(line) + "\n" for line in lines))


def running_cost(row: JobRow, estimate: float | None) -> str | None:
    """What a running job costs, "job-0007 running: about $0.10, $0.05 so far"; None: nothing."""
    parts = [f"about {usd(estimate)}" if estimate else None, f"{row.spent.text()} so far" if row.spent else None]
    return f"{row.id} running: {', '.join(filter(None, parts))}" if any(parts) else None


def breakdown(row: JobRow) -> Text:
    t = row.timings
    parts = [f"{name} {seconds:.2f}s" for name, seconds in ([("load", t["load_s"])] if "load_s" in t else [])
             + render_parts(t, row.hosted)]
    text = Text(visible(f"last {row.id}: ") + "  ".join(parts))
    if row.peak_memory:
        text.append(f"\npeak {row.peak_memory / GIB:.2f} GiB")
    return text
