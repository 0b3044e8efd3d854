"""The `diffdeck` command line: the workbench (`diffdeck [SESSION]`), and the headless commands
render, ab, grid, resume, replay, sessions, models, doctor, bench, demo-eval; and the engine
daemon's serve, status, stop, queue, logs, attach, fetch (diffdeck.tui.cli.daemon).

The commands are clients of the Dispatcher, as the workbench is. Never imports torch; anything
that needs it runs in a subprocess. Textual loads only when the workbench opens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffdeck.engines import __version__
from diffdeck.engines.bench.gpu_families import DEFAULT_BUDGET_S, FAMILIES, family_names
from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.events import Status
from diffdeck.engines.core.flow_checks import flow_problem, overriding, route_job
from diffdeck.engines.core.flows import Lora
from diffdeck.engines.core.registry import DeviceError, Registry, RegistryError, load_registry
from diffdeck.engines.core.spec import DEFAULT_SCHEDULER, LOCAL_KIND, SCHEDULERS, JobSpec, SpecError, parse_size
from diffdeck.engines.core.text import counted, visible
from diffdeck.engines.daemon.wire import DaemonError
from diffdeck.engines.hosted import providers  # noqa: F401 - its providers check hosted entries as models.yaml is read
from diffdeck.engines.record.session import (
    DEFAULT_ROOT,
    Session,
    SessionError,
    SessionWriteError,
    is_session,
    new_session_dir,
    summarize,
)
from diffdeck.engines.record.spend import day_spent, ledger_path, today
from diffdeck.engines.sets.tolerance import Tolerance
from diffdeck.engines.sets.variants import (
    AXIS_FIELDS,
    CONFIRM_ABOVE,
    VariantSet,
    plan_grid,
    plan_varied,
)
from diffdeck.tui.cli.daemon import COMMANDS as DAEMON_COMMANDS
from diffdeck.tui.cli.daemon import add_commands as add_daemon_commands
from diffdeck.tui.cli.daemon import (
    add_engine_options,
    daemon_connection,
    open_for_writing,
    render_attached,
    this_command,
    warn_of_a_daemon_holding,
    whole_number,
)
from diffdeck.tui.cli.progress import exit_status, follow_jobs
from diffdeck.tui.config import IMAGE_MODES, ConfigError, load_config

if TYPE_CHECKING:
    from diffdeck.engines.service.recorded_queue import RecordedQueue


COMMANDS = ("render", "ab", "grid", "resume", "replay", "sessions", "models", "flows", "doctor", "demo-eval", "bench",
            *DAEMON_COMMANDS)  # build_parser's, in its order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffdeck", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_workbench_help(),
        description="A terminal workbench for local diffusion models.\n`diffdeck [SESSION]` opens the "
                    "workbench (its options at the end); the commands below run headless.")
    parser.add_argument("--version", action="version", version=f"diffdeck {__version__}")
    models_help = "models.yaml to use (default: $DIFFDECK_MODELS, ./models.yaml, then the user config dir)"
    parser.add_argument("--models", metavar="FILE", help=models_help)
    # --models is also taken after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", metavar="FILE", default=argparse.SUPPRESS, help=models_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    job = argparse.ArgumentParser(add_help=False)  # what every rendering command takes
    # No defaults: an option left out is None and the spec takes JobSpec's own; render --from refuses any given.
    job.add_argument("--model", help="a model from `diffdeck models` (default: demo)")
    job.add_argument("--negative", metavar="TEXT", help="negative prompt")
    job.add_argument("--seed", type=int, help="first seed; image i uses seed+i (default: random, recorded)")
    job.add_argument("--count", type=int, help="number of images (default: 1)")
    job.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    job.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    job.add_argument("--size", metavar="WxH", help="image size, for example 512x768 (default: the model's)")
    job.add_argument("--scheduler",
                     help=f"{DEFAULT_SCHEDULER} (the model's own), or one of: {', '.join(SCHEDULERS)}")
    job.add_argument("--route", metavar="NAME",
                     help="render through a route of `diffdeck flows` (preview, final, ...), or auto: the first "
                          "route whose rule holds for the prompt (else final)")
    job.add_argument("--flow", metavar="NAME", help="render through a flow of `diffdeck flows`")
    job.add_argument("--lora", action="append", metavar="FILE[:WEIGHT]",
                     help="a LoRA adapter: a .safetensors file, or org/repo in the hub cache, at WEIGHT "
                          "(default 1); repeatable")
    job.add_argument("--init", type=Path, metavar="IMAGE.png",
                     help="the image a flow that starts with img2img starts from (a preview, say)")
    job.add_argument("--session", type=Path, metavar="DIR",
                     help=f"session folder to write into (default: a new one under ./{DEFAULT_ROOT}/)")
    job.add_argument("--json", action="store_true", help="print one JSON object per image")

    render = commands.add_parser("render", parents=[common, job], help="render images headless, through the workers")
    render.add_argument("prompts", nargs="*", metavar="PROMPT", help="one job per prompt, queued in order")
    render.add_argument("--from", dest="from_image", type=Path, metavar="IMAGE.png",
                        help="render a diffdeck image again from its own record (its spec and seed)")
    render.add_argument("--max-cost", type=float, metavar="SECONDS",
                        help="with --route: the preview route when the route's estimated render time is over this")
    render.add_argument("--max-cost-usd", type=float, metavar="DOLLARS",
                        help="with --route: the preview route when the route's estimated price is over this")
    add_engine_options(render)
    render.set_defaults(run=cmd_render)

    large = f"queue a set of more than {CONFIRM_ABOVE} jobs without asking"
    ab = commands.add_parser("ab", parents=[common, job], help="render variants with shared seeds, and compare them",
                             description="Variants A, B, ... that share every setting and seed but what they "
                                         "change: several prompts, or one prompt and --vary.")
    ab.add_argument("prompts", nargs="+", metavar="PROMPT", help="one variant per prompt (or one prompt for all)")
    ab.add_argument("--vary", action="append", default=[], metavar="FIELD=A,B",
                    help="a field that takes one value per variant, for example steps=4,20 or model=demo,other "
                         "(repeatable; grid syntax: ranges, cat -> dog)")
    ab.add_argument("--yes", action="store_true", help=large)
    ab.set_defaults(run=cmd_ab)

    grid = commands.add_parser("grid", parents=[common, job], help="render a grid of variants over up to three axes",
                               description="Axes: FIELD=a, b, c  or  FIELD=10..30 step 5  or  prompt=cat -> dog, fox. "
                                           f"Fields: {', '.join(AXIS_FIELDS)}, lora.weight, and "
                                           "KIND.FIELD of a flow's stages (upscale.strength=0.3, 0.5).")
    grid.add_argument("prompt", metavar="PROMPT")
    grid.add_argument("--x", required=True, metavar="AXIS", help="the columns, for example steps=4,8,16")
    grid.add_argument("--y", metavar="AXIS", help="the rows, for example model=demo,other")
    grid.add_argument("--page", metavar="AXIS", help="one sheet per value, for example cfg=5,7")
    grid.add_argument("--yes", action="store_true", help=large)
    grid.set_defaults(run=cmd_grid)

    resume = commands.add_parser("resume", parents=[common],
                                 help="render what a session had queued or running when diffdeck stopped")
    resume.add_argument("session", type=Path, help="a session folder")
    resume.add_argument("--json", action="store_true", help="print one JSON object per image")
    resume.set_defaults(run=cmd_resume)

    replay = commands.add_parser("replay", parents=[common], help="render a session's jobs again, and check them")
    replay.add_argument("session", type=Path, help="a session folder")
    replay.add_argument("--check", action="store_true", help="compare every image with the recorded one")
    replay.add_argument("--jobs", metavar="IDS", help="job ids separated by commas (default: all finished jobs)")
    replay.add_argument("--into", type=Path, metavar="DIR",
                        help="write replay-N/ into this folder (default: into the session replayed)")
    near = Tolerance()
    replay.add_argument("--min-psnr", type=float, default=near.min_psnr_db, metavar="DB",
                        help=f"near-identical needs at least this PSNR (default: {near.min_psnr_db:g})")
    replay.add_argument("--max-difference", type=int, default=near.max_difference, metavar="LEVELS",
                        help="near-identical allows no channel of any pixel to differ by more than this, "
                             f"of 255 (default: {near.max_difference})")
    replay.add_argument("--max-phash", type=int, default=near.max_phash_distance, metavar="BITS",
                        help=f"near-identical allows at most this perceptual-hash distance "
                             f"(default: {near.max_phash_distance})")
    replay.add_argument("--rerun-hosted", action="store_true",
                        help="render hosted models' jobs again too (each image costs what it cost before)")
    replay.add_argument("--json", action="store_true", help="one JSON object per image, then a summary")
    replay.set_defaults(run=cmd_replay)

    sessions = commands.add_parser("sessions", help="list the sessions under a folder")
    sessions.add_argument("root", type=Path, nargs="?", default=DEFAULT_ROOT,
                          help=f"where to look (default: ./{DEFAULT_ROOT})")
    sessions.add_argument("--json", action="store_true")
    sessions.set_defaults(run=cmd_sessions)

    models = commands.add_parser("models", parents=[common], help="list the model registry")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=cmd_models)

    flows = commands.add_parser("flows", parents=[common], help="list the flows and routes")
    flows.add_argument("--json", action="store_true")
    flows.set_defaults(run=cmd_flows)

    doctor = commands.add_parser("doctor", parents=[common], help="report versions, GPUs, NVML and terminal image support")
    doctor.set_defaults(run=cmd_doctor)

    demo_eval = commands.add_parser("demo-eval", parents=[common],
                                    help="render fixed prompts on the demo model and score how well it follows them")
    demo_eval.add_argument("--model", default="demo", help="the model to score (default: demo)")
    demo_eval.add_argument("--per-group", type=whole_number(1), default=60, metavar="N",
                           help="prompts per group: trained shape/colour pairs, held-out pairs (default: 60)")
    demo_eval.add_argument("--json", action="store_true")
    demo_eval.set_defaults(run=cmd_demo_eval)

    bench = commands.add_parser("bench", parents=[common], help="per-image overhead of diffdeck over a bare diffusers loop")
    bench.add_argument("what", nargs="?", choices=("render", "sessions", "keys", "frame", "fleet", "gpu"),
                       default="render",
                       help="render: per-image overhead (default); sessions: autosave, open and replay costs; "
                            "keys: keystroke latency in the workbench, idle and while rendering; "
                            "frame: the workbench's first frame in tmux against a minimal Textual app's; "
                            "fleet: a mixed queue simulated on 1, 2, 4 and 8 GPUs under three placements; "
                            "gpu: full-size pipelines against bare diffusers, isolation, the memory budget, "
                            "batching, offload and dtypes, as a Markdown table")
    bench.add_argument("--model", default="demo")
    bench.add_argument("-n", type=int, default=1, help="images per round (default: 1)")
    bench.add_argument("--rounds", type=whole_number(1), metavar="N",
                       help="alternating rounds of each (default: 60; frame: 10; gpu: 3, with --toy 2)")
    bench.add_argument("--keys", type=whole_number(1), default=200, metavar="N",
                       help="keys: keystrokes idle, then as many while rendering (default: 200)")
    bench.add_argument("--session", type=Path, metavar="PATH", dest="timings",  # read only: not a written folder
                       help="fleet: simulate with the step and load times recorded in this session "
                            "(default: stated SD-class constants)")
    bench.add_argument("--toy", action="store_true", help="gpu: tiny pipelines of the same classes, for a CPU")
    bench.add_argument("--families", type=family_names, default=FAMILIES, metavar="NAMES",
                       help=f"gpu: the pipelines to build and measure (default: {','.join(FAMILIES)})")
    bench.add_argument("--out", type=Path, metavar="FILE.md", help="gpu: write the table there too")
    bench.add_argument("--budget-s", type=whole_number(0), default=DEFAULT_BUDGET_S, metavar="SECONDS",
                       help=f"gpu: the whole run's time; rows past it are skipped, named (default: {DEFAULT_BUDGET_S})")
    bench.set_defaults(run=cmd_bench)
    add_daemon_commands(commands, common)
    return parser


def build_workbench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffdeck", description="Open the workbench (the terminal UI).",
                                     epilog="Commands: diffdeck COMMAND --help; see `diffdeck --help`.")
    parser.add_argument("session", type=Path, nargs="?", metavar="SESSION",
                        help=f"a session folder to open or resume (default: a new one under ./{DEFAULT_ROOT}/)")
    parser.add_argument("--new", action="store_true", help="SESSION does not exist yet: start it there")
    parser.add_argument("--models", metavar="FILE", help="models.yaml to use")
    parser.add_argument("--images", choices=IMAGE_MODES,
                        help="how to draw images: auto (ask the terminal), kitty, sixel, halfcell, off")
    add_engine_options(parser, fetch=False)
    parser.set_defaults(run=run_workbench)
    return parser


def _workbench_help() -> str:
    """The workbench's usage and options, for the end of `diffdeck --help`."""
    workbench = build_workbench_parser()
    workbench.description = workbench.epilog = None
    return "the workbench:\n" + workbench.format_help()


class UsageError(Exception):
    """The command line itself is wrong: a mistyped command, words that belong to no option."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # every command's parser is a few ms: the workbench, which starts against the clock, builds only its own
        parser = build_parser() if _names_a_command(argv) else build_workbench_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}{_quoting_hint(argv, extra)}")
        for folder in _written_folders(args):
            _check_session_folder(folder)
        status = args.run(args)
        sys.stdout.flush()  # here, so that a reader gone (`| head`) is caught below, not at exit
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE
    except (SpecError, RegistryError, DeviceError, SessionError, ConfigError, DaemonError, UsageError) as e:
        print(f"diffdeck: error: {visible(str(e))}", file=sys.stderr)  # it may quote a file, a PNG, a daemon
        return 2
    except SessionWriteError as e:  # a full disk, say: not bad input, and what was recorded is kept
        print(f"diffdeck: error: {visible(str(e))}", file=sys.stderr)
        return 1


def _written_folders(args: argparse.Namespace) -> list[Path | None]:
    """The folders a command will write: a replay's is --into (the session it reads only when
    none is given); `fetch DIR`'s is DIR."""
    if args.run is cmd_replay:
        return [args.into or args.session]
    return [getattr(args, "session", None), getattr(args, "folder", None)]


def _check_session_folder(folder: Path | None) -> None:
    """A session folder named on the command line is a folder this user may write, or can be made
    as one: refused at once otherwise, before anything renders only to find nowhere to go."""
    if folder is None:
        return
    try:
        nearest = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    except OSError as e:  # a folder on the way that this user may not look into
        raise SessionError(f"{folder} cannot be reached: {e.strerror or e}") from None
    if not nearest.is_dir():
        raise SessionError(f"{nearest} is not a folder; a session is a folder of its own")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SessionError(f"{folder} is not writable" if nearest == folder else
                           f"{folder} cannot be made: {nearest} is not writable")


def _names_a_command(argv: list[str]) -> bool:
    """Whether argv is for a command (or for help): else it opens the workbench. A first word
    that is no command and no file, but close to a command's name, is a mistyped command."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help", "--version"):
            return True
        if word in ("--models", "--images", "--engine", "--remote"):
            next(words, None)
        elif not word.startswith("-"):
            close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.75)
            if word not in COMMANDS and close and "--new" not in argv and not Path(word).exists():
                raise UsageError(f"unknown command {word!r}; did you mean {close[0]}? (diffdeck --help lists them)")
            return word in COMMANDS
    return False


def _quoting_hint(argv: list[str], extra: list[str]) -> str:
    """For words left over after a grid axis, such as `--x steps=10..30 step 5`: how to quote it."""
    at = argv.index(extra[0]) if extra[0] in argv else 0
    if at < 2 or argv[at - 2] not in ("--x", "--y", "--page", "--vary"):
        return ""
    return f'; an axis with spaces is one argument, quoted: {argv[at - 2]} "{" ".join([argv[at - 1], *extra])}"'


def run_workbench(args: argparse.Namespace) -> int:
    if args.session is not None and not args.session.exists() and not args.new:  # a typo must not start afresh
        raise SessionError(f"no session at {args.session}; diffdeck --new {args.session} starts one there "
                           "(diffdeck sessions lists the sessions there are)")
    from diffdeck.tui.app import Workbench  # Textual loads only for the workbench, not for the commands
    from diffdeck.tui.engine import AttachedEngine, LocalEngine, remote_cache
    from diffdeck.tui.images import effective_mode, image_widget, terminal_hint, tmux_blocks_graphics
    from diffdeck.tui.themes import load_theme
    from textual.theme import BUILTIN_THEMES

    config = load_config()
    themes = [load_theme(path) for path in config.theme_files]
    if config.theme not in {t.name for t in themes} | set(BUILTIN_THEMES):
        raise ConfigError(f"theme {config.theme!r} is not known; themes: {', '.join(t.name for t in themes)} "
                          "and Textual's own")
    connect = daemon_connection(args)
    if connect:
        engine = AttachedEngine(connect, args.remote or "daemon", cache=remote_cache() if args.remote else None)
    else:
        if args.session is not None and args.session.is_dir() and any(args.session.iterdir()) \
                and not is_session(args.session):
            raise SessionError(f"{args.session} is a folder but not a diffdeck session; name a new or existing session")
        engine = LocalEngine(load_registry(args.models),
                             Session.open_for_writing(args.session or new_session_dir(), this_command()))
    asked = args.images or config.images
    tmux_blocks = tmux_blocks_graphics(asked)

    async def run() -> int:
        if engine.attached:  # before the screen: a daemon's models are its own, and a failed connection is one line
            await engine.start()  # (the workbench starts a local engine after its first frame)
        try:
            app = Workbench(engine, config, themes, image_class=image_widget(effective_mode(asked, tmux_blocks)),
                            hint=terminal_hint(asked, tmux_blocks))
            await app.run_async()
        finally:
            problem = await engine.shut_down()
            engine.session.close()
        if problem:  # the workbench has said it already, if it was on the screen when it happened
            print(f"diffdeck: {visible(problem)}", file=sys.stderr)
        if app.start_error:
            print(f"diffdeck: error: {visible(app.start_error)}", file=sys.stderr)
        print(visible(app.farewell()))
        return app.return_code or 0
    return asyncio.run(run())


# render

def cmd_render(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    if args.from_image:
        if args.prompts:
            raise SpecError("prompt", "give a prompt or --from IMAGE.png, not both")
        given = _given_job_options(args) + [f"--{name.replace('_', '-')}" for name in ("max_cost", "max_cost_usd")
                                            if getattr(args, name) is not None]
        if given:
            raise SpecError("--from", f"renders the image as it was recorded, so {', '.join(given)} cannot apply; "
                                      "to change it, render its prompt with those options")
        from diffdeck.engines.record.png_metadata import MetadataError, image_job  # PIL's PNG reader: not at start

        try:
            specs = [image_job(args.from_image)]
        except MetadataError as e:
            raise SpecError("--from", str(e)) from None
    elif not args.prompts:
        raise SpecError("prompt", "is missing: diffdeck render \"PROMPT\" [\"PROMPT\" ...], or --from IMAGE.png")
    else:
        specs = [_job_spec(args, prompt) for prompt in args.prompts]
    for option, cap, unit in (("--max-cost", args.max_cost, "seconds"), ("--max-cost-usd", args.max_cost_usd, "dollars")):
        if cap is not None and not args.route:
            raise SpecError(option, "caps the cost of a route; give --route final (or auto) with it")
        if cap is not None and not 0 < cap < float("inf"):
            raise SpecError(option, f"is a number of {unit} above 0, got {cap:g}")
    specs = _routed_here(args, specs, registry)
    for spec in specs if not args.from_image else ():
        _check_used(args, spec, registry)
    connect = daemon_connection(args)
    if args.fetch and not connect:
        raise SpecError("--fetch", "copies images from a daemon; this render is local (--engine daemon, or --remote HOST)")
    if connect:
        return asyncio.run(render_attached(connect, specs, args.json, args.fetch))
    session = open_for_writing(args.session or new_session_dir())

    async def queue(engine: RecordedQueue) -> list[str]:
        for spec in specs:  # every prompt checked first: a refused one leaves none queued in the session
            engine.dispatcher.resolve(spec)
        records = [await engine.submit(spec) for spec in specs]
        for record in records:
            if record.spec.get("routed_by") and not args.json:
                print(visible(f"{record.id}: {record.spec['routed_by']}"), file=sys.stderr)
        return [record.id for record in records]

    return asyncio.run(_render(registry, session, queue, args.json))


def _job_spec(args: argparse.Namespace, prompt: str) -> JobSpec:
    width, height = parse_size(args.size) if args.size else (None, None)
    if args.route and args.flow:
        raise SpecError("--flow", "give --route or --flow, not both (a route names its own flow)")
    given = {"model": args.model, "negative_prompt": args.negative, "seed": args.seed, "steps": args.steps,
             "guidance": args.guidance, "width": width, "height": height, "scheduler": args.scheduler,
             "count": args.count, "route": args.route, "flow": args.flow,
             "loras": tuple(_lora(text) for text in args.lora) if args.lora else None,
             "init_image": str(args.init.expanduser().absolute()) if args.init else None}
    return JobSpec(prompt=prompt, **{name: value for name, value in given.items() if value is not None})


# the options a route or flow may set in every stage, and the JobSpec field each gives
STAGE_OPTIONS = {"model": "model", "steps": "steps", "guidance": "guidance", "scheduler": "scheduler", "lora": "loras"}


def _check_used(args: argparse.Namespace, spec: JobSpec, registry: Registry) -> None:
    """With --route or --flow, an option is used where some stage leaves its field to the job;
    one that the route or flow sets everywhere is refused (it would be dropped without a word)."""
    if not (spec.route or spec.flow):
        return
    for option, field in STAGE_OPTIONS.items():
        if getattr(args, option) is None:
            continue
        given = args.model if field == "model" else getattr(spec, field)  # a route may have set the model
        why = overriding(spec, registry, field, given)
        if why is not None:
            raise SpecError(f"--{option}", f"{why}, so --{option} would not be used; leave it out, or render "
                                           f"without {'--route' if spec.route else '--flow'} to set it")


def _lora(text: str) -> Lora:
    """`FILE[:WEIGHT]`, a file named as the daemon will find it: absolute."""
    lora = Lora.from_dict(text, "--lora")
    local = Path(lora.source).expanduser()
    return dataclasses.replace(lora, source=str(local.absolute())) if local.exists() else lora


def _given_job_options(args: argparse.Namespace) -> list[str]:
    return [f"--{name}" for name in ("model", "negative", "seed", "count", "steps", "guidance", "size", "scheduler",
                                     "route", "flow", "lora", "init")
            if getattr(args, name) is not None]


# A/B sets and grids

def cmd_ab(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    base = _used_job_spec(args, args.prompts[0], registry)
    return _run_set(args, registry, plan_varied(base, args.prompts, args.vary, registry))


def cmd_grid(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    axes = {"x": args.x, "y": args.y, "page": args.page}
    return _run_set(args, registry, plan_grid(_used_job_spec(args, args.prompt, registry), axes, registry))


def _used_job_spec(args: argparse.Namespace, prompt: str, registry: Registry) -> JobSpec:
    (spec,) = _routed_here(args, [_job_spec(args, prompt)], registry)
    _check_used(args, spec, registry)
    return spec


def _routed_here(args: argparse.Namespace, specs: list[JobSpec], registry: Registry) -> list[JobSpec]:
    """Jobs that ask for a route routed now, where prices are known, so that a money cap (the
    route's `max_cost_usd:`, or --max-cost-usd) applies before their options are checked against it."""
    if not any(spec.route for spec in specs):
        return specs
    from diffdeck.engines.hosted.estimate import pricer  # the providers' sizes: not at start

    caps = getattr(args, "max_cost", None), getattr(args, "max_cost_usd", None)  # render's options
    return [route_job(spec, registry, *caps, pricer(registry)) for spec in specs]


def _run_set(args: argparse.Namespace, registry: Registry, variants: VariantSet) -> int:
    """Say how large the set is, ask when it is large, render it into a session, then measure
    A against each other variant (A/B) and write the contact sheet."""
    from diffdeck.engines.hosted.estimate import cost_note  # the providers' sizes: not at start

    cost = cost_note((variant.spec for variant in variants.variants), registry)
    said = variants.describe() + (f" · {cost}" if cost else "")
    print(f"{'A/B' if variants.kind == 'ab' else 'grid'}: {visible(said)}", file=sys.stderr)
    if variants.needs_confirmation() and not args.yes and not _confirm(f"queue {len(variants.variants)} jobs?"):
        raise SpecError("grid", f"{len(variants.variants)} jobs is more than {CONFIRM_ABOVE}; "
                                "nothing queued (confirm, or pass --yes)")
    session = open_for_writing(args.session or new_session_dir())
    queued: list[str] = []

    async def queue(engine: RecordedQueue) -> list[str]:
        set_id, job_ids = await engine.submit_set(variants)
        queued.append(set_id)
        return job_ids

    status = asyncio.run(_render(registry, session, queue, args.json))
    if not queued:
        return status
    from diffdeck.engines.sets.contact_sheet import contact_sheet
    from diffdeck.engines.sets.pairs import set_differences, set_quality
    from diffdeck.tui.quality import summary_lines

    set_id = queued[0]
    pairs = set_differences(session, set_id) if variants.kind == "ab" else []
    quality = set_quality(session, set_id)
    sheets = [str(path) for path in contact_sheet(session, set_id)]
    if args.json:
        print(json.dumps({"set": set_id, "pairs": pairs, "quality": quality, "sheets": sheets}))
        return status
    for pair in pairs:
        measures = pair["note"] or f"PSNR {pair['psnr_db']} dB, perceptual-hash distance {pair['phash_distance']}"
        print(f"{pair['left']} vs {pair['right']} image {pair['image']} seed {pair['seed']}: {measures}")
    if quality:
        print("quality (SSIM, MS-SSIM: against the first variant's image of the same index, or a flow's previous stage):")
        for line in summary_lines(quality):
            print(visible(line))
    for sheet in sheets:
        print(visible(f"contact sheet: {sheet}"))
    return status


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_resume(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    session = open_for_writing(args.session, create=False)
    pending = session.unfinished()
    if not pending:
        session.close()
        print(f"{args.session}: nothing was queued or running; nothing to resume", file=sys.stderr)
        return 0
    refused: list[str] = []

    async def restored(engine: RecordedQueue) -> list[str]:
        """The session's unfinished jobs, queued again as the recorded queue starts."""
        for job_id, why in engine.refused:  # left queued in the session, for another day
            refused.append(job_id)
            print(visible(f"{job_id}: not resumed: {why}"), file=sys.stderr)
        job_ids = [job.id for job in pending if job.id not in refused]
        for job_id in job_ids:
            kept = len(engine.dispatcher.jobs[job_id].images)
            print(visible(f"{job_id}: {engine.dispatcher.jobs[job_id].status}")
                  + (f", keeping {kept} image(s) already made" if kept else ""), file=sys.stderr)
        return job_ids

    status = asyncio.run(_render(registry, session, restored, args.json, resume=True))
    return status or (1 if refused else 0)


def _finish(session: Session) -> None:
    """Compact a session this command wrote, and let go of it. A compaction that cannot be
    written is said in one line: the journal still holds everything."""
    try:
        if session.jobs and session.write_error is None:  # bad input leaves no session folder behind
            session.compact()
    except SessionWriteError as e:
        print(f"diffdeck: warning: {visible(str(e))}", file=sys.stderr)
    finally:
        session.close()


async def _render(registry: Registry, session: Session, queue_jobs, as_json: bool, resume: bool = False) -> int:
    """Queue jobs on a recorded queue of `session` with `queue_jobs(engine)` (their ids; with
    `resume`, the session's unfinished jobs are queued again first), print each image as it is
    saved, then shut the queue down, which compacts the session, and let go of the session.
    Exit status: 0 all done, 130 cancelled, 1 any failed or held."""
    from diffdeck.engines.service.recorded_queue import RecordedQueue

    engine = RecordedQueue(registry, session)
    events = engine.subscribe()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:  # Ctrl-C: no more rendering, nor measuring (the next open measures what is left)
        engine.dispatcher.cancel_all()
        engine.quality.close()

    try:
        engine.start(resume=resume)
        job_ids = await queue_jobs(engine)  # raises on bad input, before anything runs
        jobs = {job_id: engine.dispatcher.jobs[job_id].record() for job_id in job_ids}
        loop.add_signal_handler(signal.SIGINT, interrupted)
        await warn_of_a_daemon_holding([job.spec["model"] for job in jobs.values()])
        following = asyncio.create_task(follow_jobs(events, jobs, as_json))
        await asyncio.wait({following, engine.recording}, return_when=asyncio.FIRST_COMPLETED)
        if session.write_error is None:
            await engine.quality.settled()  # the measures of each image it made (not of a resumed session's older ones)
        if session.write_error is not None:  # nothing more can be recorded: render nothing more
            following.cancel()
            engine.dispatcher.cancel_all()
            raise SessionWriteError(*session.write_error.args)
        ended = following.result()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        events.close()
        problem = await engine.shut_down()
        session.close()
    if problem:
        print(f"diffdeck: warning: {visible(problem)}", file=sys.stderr)
    return exit_status(ended)


# replay

def cmd_replay(args: argparse.Namespace) -> int:
    from diffdeck.engines.hosted.estimate import cost_note  # the providers' sizes: not at start
    from diffdeck.engines.service.replay import (
        Check,
        ImageResult,
        check_environment,
        discard_if_empty,
        hosted_record,
        job_models,
        new_replay_folder,
        replay,
        result_dict,
        select_jobs,
        summarize_replay,
        to_render,
    )

    registry = load_registry(args.models)
    session = Session.open(args.session, create=False)
    job_ids = select_jobs(session, args.jobs)
    rendered = to_render(session, job_ids, args.rerun_hosted)
    models = job_models(session, rendered)
    for name in models:
        registry.get(name)
    asyncio.run(warn_of_a_daemon_holding(models))
    environment = check_environment(session, registry, models)
    say = (lambda text: None) if args.json else print
    cost = cost_note((JobSpec.from_dict(session.jobs[job_id]["spec"]) for job_id in rendered
                      if hosted_record(session, job_id)), registry)
    if cost:
        say(f"rendering hosted images again: {visible(cost)}")
    # a folder only where something is rendered again; from here on, _finish lets it go
    target = open_for_writing(new_replay_folder(args.into or args.session)) if rendered else None
    say("environment: " + ("as recorded" if not environment.differences else "differs from the record:"))
    for line in environment.differences:
        say(f"  {visible(line)}")  # recorded in the session: anything may be there
    if args.check:
        factors = [f"  {model}: {visible(factor)}" for model, named in environment.drift.items() for factor in named]
        say("drift factors (near-identical pixels pass for these models):" if factors
            else "drift factors: none, so only identical pixels pass")
        for line in factors:
            say(line)
    check = Check(Tolerance(args.min_psnr, args.max_difference, args.max_phash),
                  environment.drift) if args.check else None

    def report(result: ImageResult) -> None:
        if args.json:
            print(json.dumps(result_dict(result)), flush=True)
            return
        verdict = result.verdict
        details = [] if verdict is None or verdict.psnr_db is None else [
            f"PSNR {verdict.psnr_db} dB", f"largest difference {verdict.max_difference}/255",
            f"perceptual-hash distance {verdict.phash_distance}"]
        details += [verdict.note] if verdict and verdict.note else []
        detail = f" ({', '.join(details)})" if details else ""
        outcome = verdict.kind if verdict else ("rendered" if result.replayed else result.hosted or "not rendered")
        where = f"{visible(result.stage)} differs: " if result.stage else ""
        print(f"{visible(result.job)} image {result.image} seed {result.seed}: {where}{outcome}{detail}", flush=True)

    try:
        results = asyncio.run(replay(registry, session, job_ids, target, check, report, args.rerun_hosted))
    finally:
        if target is not None:
            _finish(target)
            if discard_if_empty(target.folder):  # refused, or nothing rendered: nothing to keep
                target = None
    summary = summarize_replay(results, target and target.folder, environment)
    if args.json:
        print(json.dumps({"summary": summary.to_dict()}))
    else:
        verdicts = ", ".join(f"{n} {k}" for k, n in summary.counts.items() if n) if args.check else ""
        print((f"{counted(summary.rendered, 'image')} replayed into {summary.folder}" if summary.rendered
               else f"{counted(summary.images, 'image')}, none rendered again")
              + (f": {verdicts}" if verdicts else "")
              + (f"; {summary.not_rendered} not rendered" if summary.not_rendered else "")
              + (f"; {summary.hosted_left} of hosted models not rendered again" if summary.hosted_left else ""))
    return 0 if summary.passed(args.check) else 1


# sessions

def cmd_sessions(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        raise SessionError(f"{args.root} is not a folder")
    candidates = [args.root, *args.root.glob("*"), *args.root.glob("*/*")]  # sessions/examples/x too
    rows = [summarize(folder) for folder in sorted(candidates) if folder.is_dir() and is_session(folder)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if "problem" in row:
            print(visible(f"{row['path']}  unreadable: {row['problem']}"))
        else:
            not_done = ", ".join(f"{row['statuses'][status]} {status}" for status in NOT_DONE
                                   if status in row["statuses"])
            print(visible(f"{row['path']}  {row['created']}  {counted(row['jobs'], 'job')}"
                          + (f" ({not_done})" if not_done else "")
                          + f"  {counted(row['images'], 'image')}  {row['size'] / 1e6:.1f} MB  {', '.join(row['models'])}"
                          + (f"  {row['cost']}" if row["cost"] else "")))
    if not rows:
        print(f"no sessions under {args.root}")
    ledger = ledger_path()
    if ledger.is_file():
        try:
            spent = day_spent(ledger, today())
        except OSError as e:
            raise SessionError(f"{ledger} cannot be read ({e.strerror or e})") from None
        print(visible(f"spent today ({today()}) on hosted models: {usd(spent)}, in {ledger}"))
    return 0


# the statuses `sessions` counts, in this order
NOT_DONE = (Status.QUEUED, Status.RUNNING, Status.FAILED, Status.HELD, Status.CANCELLED)


# models

def cmd_models(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    rows = [{**row, **_hosted_terms(registry, row["name"])} for row in registry.table()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if registry.path:
        print(visible(f"models from {registry.path}"))
    table = [("NAME", "FAMILY", "OFFLINE", "SOURCE")] + [  # a hosted model: its provider, and its model id
        (r["name"], r["kind"], "hosted", r["source"]) if r["kind"] != LOCAL_KIND else
        (r["name"], r["family"] or "?", "yes" if r["offline"] else "no", r["source"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:  # models.yaml says what is in them
        print(visible("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3]))
    for r in rows:
        if r["description"]:
            example = f' For example: "{r["example"]}"' if r["example"] else ""
            print(visible(f"  {r['name']}: {r['description']}.{example}"))
        for line in (r["note"], r["problem"] or (r["key_set"] and f"its key's variable ${r['key_env']} is set")):
            if line:
                print(visible(f"  {r['name']}: {line}"))
        if r["price"]:
            print(visible(f"  {r['name']}: {_price_text(r['price'])}; requests go to {r['base_url']}"))
    return 0


def _hosted_terms(registry: Registry, name: str) -> dict[str, Any]:
    """A hosted model's base URL (its entry's, else its provider's) and its price an image at its
    default size, with where that price comes from; None for a local model."""
    model = registry.get(name)
    if not model.hosted:
        return {"base_url": None, "price": None}
    from diffdeck.engines.hosted.estimate import job_estimate  # the providers' sizes: not at start

    defaults = registry.defaults(name, None)
    price = job_estimate(JobSpec("", model=name), registry).parts[0].price
    return {"base_url": providers.provider(model.kind).base_url(model),
            "price": {"usd": price.usd, "source": price.source, "size": f"{defaults['width']}x{defaults['height']}"}}


def _price_text(terms: dict[str, Any]) -> str:
    """"$0.05 an image at 1024x1024 (published prices read 2026-12-01)", or that it is not known."""
    from diffdeck.engines.hosted.prices import Price

    price = Price(terms["usd"], terms["source"])
    return price.where() if price.usd is None else f"{usd(price.usd)} an image at {terms['size']} ({price.where()})"


# flows

def cmd_flows(args: argparse.Namespace) -> int:
    registry = load_registry(args.models)
    flows = [{**registry.flows[name].to_dict(), "problem": flow_problem(name, registry)} for name in registry.flows]
    routes = [{"name": name, "flow": route.flow, "model": route.model, "when": route.when and dataclasses.asdict(route.when),
               "fields": {k: v for k, v in route.fields.items() if k != "loras"}, "origin": route.origin}
              for name, route in registry.routes.items()]
    if args.json:
        print(json.dumps({"flows": flows, "routes": routes}, indent=2))
        return 0
    print("flows:")  # models.yaml says what is in them: every line goes through visible()
    for flow in flows:
        print(visible(f"  {flow['name']}: " + " -> ".join(_stage_text(stage) for stage in flow["stages"])))
        for line in (flow["description"], flow["problem"] and f"cannot render: {flow['problem']}"):
            if line:
                print(visible(f"      {line}"))
    print("routes (--route NAME, or auto: the first whose rule holds, else final):")
    for name, route in registry.routes.items():
        print(visible(f"  {name} -> {route.target()}" + (f"  when {route.when.describe()}" if route.when else "")))
    return 0


def _stage_text(stage: dict[str, Any]) -> str:
    """`upscale x2 lanczos strength 0.5 12 steps on demo`: a stage as `flows:` writes it."""
    words = [stage["kind"]] + ([f"x{stage['factor']:g}"] if "factor" in stage else [])
    words += [f"{k} {stage[k]:g}" if isinstance(stage[k], float) else f"{k} {stage[k]}"
              for k in ("method", "strength", "switch", "tile", "guidance", "scheduler") if k in stage]
    words += [f"{stage['steps']} steps"] if "steps" in stage else []
    words += [f"LoRA {Lora.from_dict(x).name}:{x.get('weight', 1):g}" for x in stage.get("loras") or ()]
    return " ".join(words) + (f" on {stage['model']}" if "model" in stage else "")


# doctor

def cmd_doctor(args: argparse.Namespace) -> int:
    from diffdeck.engines.queue.environment_probe import probe_environment
    from diffdeck.engines.queue.telemetry import Telemetry

    print(f"diffdeck {__version__}  python {sys.version.split()[0]}  ({sys.executable})")
    env = probe_environment()
    if env is None:
        print("engine: could not start python -m diffdeck.engines.worker.environment; is torch installed? (pip install -e .)")
    else:
        print("libraries: " + "  ".join(f"{k} {v or 'missing'}" for k, v in env["versions"].items()))
        print(f"CUDA: {env['cuda'] or 'not available: workers render on the CPU'}"
              + (f"  cuDNN {env['cudnn']}" if env["cudnn"] else ""))
        for i, name in enumerate(env["gpus"]):
            print(visible(f"GPU {i}: {name}"))
    telemetry = Telemetry()
    print("NVML: " + ("ok" if telemetry.has_gpu else visible(telemetry.gpu_problem)))
    for line in terminal_report():
        print(line)
    try:
        registry = load_registry(args.models)
        print(f"models: {len(registry.models)} ({registry.path or 'built-in demo only'})")
    except RegistryError as e:
        print(f"models: {visible(str(e))}")
    return 0


def terminal_report() -> list[str]:
    term, colorterm = os.environ.get("TERM", "?"), os.environ.get("COLORTERM", "")
    lines = [f"terminal: TERM={term} COLORTERM={colorterm or '(unset)'}"
             + ("" if colorterm in ("truecolor", "24bit") else
                "  (no truecolour advertised: over SSH, forward COLORTERM or set it to truecolor)")]
    if os.environ.get("TMUX"):
        passthrough = subprocess.run(["tmux", "show", "-gv", "allow-passthrough"], capture_output=True,
                                     text=True, stdin=subprocess.DEVNULL).stdout.strip() or "off"
        lines.append(f"tmux: allow-passthrough {passthrough}"
                     + ("" if passthrough in ("on", "all") else
                        "  (Kitty graphics need: set -g allow-passthrough on)"))
    if sys.stdout.isatty():
        from textual_image.renderable import Image

        lines.append(f"images: {Image.__module__.rsplit('.', 1)[-1]} (textual-image's choice for this terminal)")
    else:
        lines.append("images: not a terminal; run doctor in the terminal you will use")
    return lines


# demo-eval

def cmd_demo_eval(args: argparse.Namespace) -> int:
    from diffdeck.engines.demo.evaluate import ATTRIBUTES, TARGETS, RenderFailed, meets_targets, run

    registry = load_registry(args.models)
    try:
        results = run(registry, args.model, args.per_group)
    except RenderFailed as e:
        print(f"diffdeck: error: {visible(str(e))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{args.model}: share of images whose {', '.join(ATTRIBUTES)} match the prompt "
              f"({args.per_group} prompts a group)")
        print(f"{'':16}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
        for name, group in results.items():
            print(f"{name:16}" + "".join(f"{group['accuracy'][a]:>11.0%} " for a in ATTRIBUTES))
        print(f"{'target':16}" + "".join(f"{'>=' + format(TARGETS[a], '.0%') if a in TARGETS else '':>12}"
                                         for a in ATTRIBUTES))
    return 0 if meets_targets(results) else 1


# bench

def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "keys":
        from diffdeck.tui.cli.bench_keys import run_keys_bench

        return run_keys_bench(load_registry(args.models), args.keys)
    if args.what == "sessions":
        from diffdeck.engines.bench.session_costs import run_session_bench

        return run_session_bench(load_registry(args.models))
    if args.what == "frame":
        from diffdeck.tui.cli.bench_frame import run_frame_bench

        return run_frame_bench(args.rounds or 10, args.models)
    if args.what == "fleet":
        from diffdeck.engines.bench.fleet import run_fleet_bench

        return run_fleet_bench(args.timings)
    if args.what == "gpu":
        from diffdeck.engines.bench.gpu import run_gpu_bench

        if args.out is not None and not os.access(args.out.parent, os.W_OK | os.X_OK):
            raise UsageError(f"--out: {args.out.parent} is not a folder this user may write")
        return run_gpu_bench(args.families, args.toy, args.rounds, args.out, args.budget_s)
    from diffdeck.engines.bench.render_overhead import run_bench

    return run_bench(load_registry(args.models), args.model, args.n, args.rounds or 60)


if __name__ == "__main__":
    sys.exit(main())
