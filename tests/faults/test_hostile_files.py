"""Hostile files where diffdeck reads them: PNGs with crafted chunks, sessions and models files
nested 100,000 deep or holding a value of the wrong kind, settings of the wrong type, command-line
paths that cannot be a session, a daemon lock that is a symbolic link. Each gets one line naming
what is wrong (exit status 2), never a traceback, and nothing is changed or made."""

import io
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from diffdeck.engines.record.session import Session
from helpers import diffdeck
from PIL import Image, PngImagePlugin

DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit, in JSON and in YAML alike


def one_line(result, message: str) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("diffdeck: error: ") and message in line, line
    return line


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(*chunks: bytes, header: bytes | None = None) -> bytes:
    """A real 8x8 PNG from PIL with `chunks` written in after its header (IHDR), which `header`
    replaces when given."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PNG")
    data = out.getvalue()
    signature, ihdr, rest = data[:8], data[8:33], data[33:]
    return signature + (chunk(b"IHDR", header) if header else ihdr) + b"".join(chunks) + rest


def record_chunk(record: str) -> bytes:
    return chunk(b"tEXt", b"diffdeck\0" + record.encode())


def record_of(model) -> str:
    return json.dumps({"seed": 5, "spec": {"prompt": "a red circle", "model": model, "steps": 4}})


@pytest.mark.parametrize(("data", "message"), [
    (png(record_chunk(record_of(["demo", "demo2"]))), "model: must be a model's name, not a list"),
    (png(record_chunk(record_of({"name": "demo"}))), "model: must be a model's name, not a dict"),
    (png(record_chunk(DEEP)), "its diffdeck record is not valid JSON (nested too deeply to read)"),
    (png(chunk(b"zTXt", b"diffdeck\0\0" + zlib.compress(b'"' + b"x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1) + b'"'))),
     "MAX_TEXT_CHUNK"),
    (png(header=struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)), "claims 100000x100000 pixels"),
], ids=["model-list", "model-object", "nested-record", "ztxt-past-limit", "huge-header"])
def test_render_from_a_hostile_png_is_one_line_and_renders_nothing(tmp_path, data, message):
    (tmp_path / "x.png").write_bytes(data)
    line = one_line(diffdeck("render", "--from", "x.png", "--session", "s", cwd=tmp_path), message)
    assert "x.png" in line
    assert not (tmp_path / "s").exists()


def a_session(folder: Path) -> Path:
    """A finished one-job session, written by Session itself."""
    image = {"image": 0, "seed": 5, "path": "images/job-0001-00-5.png", "pixel_sha256": "00" * 32,
             "timings": {"denoise_s": 0.5, "decode_s": 0.1, "save_s": 0.01}, "peak_memory": 1000}
    job = {"spec": {"prompt": "a red circle", "model": "demo", "seeds": [5], "count": 1}, "status": "done",
           "images": [image], "timings": {"load_s": 1.0, "denoise_s": 0.5}, "peak_memory": 1000}
    Session(folder, {"format": 1, "name": folder.name, "created": "2026-01-01T00:00:00+0000", "models": {},
                     "sets": {}, "jobs": {"job-0001": job}}).compact()
    return folder


def edit(folder: Path, old: str, new: str) -> None:
    record = folder / "session.yaml"
    text = record.read_text()
    assert old in text
    record.write_text(text.replace(old, new, 1))


RATING = '{"type":"rating","job":"job-0001","image":0,"stars":%s}\n'
HOSTILE_SESSIONS = {  # a change to a good session -> what the error says
    "nested-journal-line": (lambda s: (s / "journal.jsonl").write_text(RATING % DEEP + RATING % 3),
                            "journal.jsonl line 1 is not a JSON event"),
    "nested-job-line": (lambda s: edit(s, '"status": "done"', f'"status": "done", "note": {DEEP}'),
                        "not valid YAML (nested too deeply to read)"),
    "nested-yaml-header": (lambda s: edit(s, "models: {}", f"models: {DEEP}"),
                           "not valid YAML (nested too deeply to read)"),
    "image-timings-text": (lambda s: edit(s, '"denoise_s": 0.5, "decode_s"', '"denoise_s": "fast", "decode_s"'),
                           "job 'job-0001' image 0 has timings or a peak memory that are not numbers"),
    "job-timings-text": (lambda s: edit(s, '"load_s": 1.0', '"load_s": "slow"'),
                         "job 'job-0001' has timings or a peak memory that are not numbers"),
    "journal-a-folder": (lambda s: ((s / "journal.jsonl").unlink(), (s / "journal.jsonl").mkdir()),
                         "journal.jsonl cannot be read"),
    "stage-latents-outside": (lambda s: edit(s, '"status": "done"', '"status": "queued", "stages": [{"stage": 0, '
                                             '"image": 0, "seed": 5, "path": "images/a.png", "latents": "../../x"}]'),
                              "job 'job-0001' stage 0 image 0 has the latents path '../../x', which leaves the session"),
}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_SESSIONS)
def test_a_hostile_session_is_one_line_and_left_as_it_is(tmp_path, name):
    spoil, message = HOSTILE_SESSIONS[name]
    spoil(a_session(tmp_path / "s"))
    before = snapshot(tmp_path / "s")
    one_line(diffdeck("resume", "s", cwd=tmp_path), message)
    assert snapshot(tmp_path / "s") == before


def test_sessions_lists_each_hostile_session_as_unreadable_and_goes_on(tmp_path):
    root = tmp_path / "sessions"
    for name, (spoil, _message) in HOSTILE_SESSIONS.items():
        spoil(a_session(root / name))
    a_session(root / "good")
    edit(a_session(root / "dated-by-hand"), "created: 2026-01-01T00:00:00+0000", "created: 2026-01-01")
    listed = diffdeck("sessions", "sessions", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    rows = {Path(row["path"]).name: row for row in json.loads(listed.stdout)}
    assert {name for name, row in rows.items() if "problem" in row} == set(HOSTILE_SESSIONS)
    for name, (_spoil, message) in HOSTILE_SESSIONS.items():
        assert message in rows[name]["problem"], rows[name]
    assert rows["good"]["jobs"] == rows["dated-by-hand"]["jobs"] == 1
    assert rows["dated-by-hand"]["created"] == "2026-01-01"
    text = diffdeck("sessions", "sessions", cwd=tmp_path)
    assert text.returncode == 0 and text.stderr == ""
    assert sum("unreadable" in line for line in text.stdout.splitlines()) == len(HOSTILE_SESSIONS)


def test_a_models_file_nested_too_deeply_is_one_line(tmp_path):
    (tmp_path / "models.yaml").write_text(f"models:\n  other:\n    source: somewhere\n    roles: {DEEP}\n")
    one_line(diffdeck("models", "--models", "models.yaml", cwd=tmp_path), "models.yaml: not valid YAML (nested too deeply")


@pytest.mark.parametrize(("session", "message"), [
    ("a-file", "a-file is not a folder"),
    ("a-file/below", "a-file is not a folder"),
    ("/proc/self/x", "/proc/self/x cannot be made: /proc/self is not writable"),
])
def test_a_session_that_cannot_be_a_folder_is_refused_before_rendering(tmp_path, session, message):
    (tmp_path / "a-file").write_text("not a folder")
    one_line(diffdeck("render", "a red circle", "--steps", "2", "--session", session, cwd=tmp_path), message)
    assert (tmp_path / "a-file").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_size_of_5000_digits_is_one_line(tmp_path):
    one_line(diffdeck("render", "a red circle", "--size", "9" * 5000 + "x64", "--session", "s", cwd=tmp_path),
             "size: a side of 5000 digits is more than 4096 pixels")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("settings", "message"), [
    ("theme: [a, b]\n", "theme must be one theme's name"),
    ("theme: {dark: true}\n", "theme must be one theme's name"),
    ("1: x\nnull: y\n", "unknown key"),
], ids=["theme-list", "theme-mapping", "unknown-keys-of-two-kinds"])
def test_settings_of_the_wrong_type_are_one_line_before_the_workbench_opens(tmp_path, monkeypatch, settings, message):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "diffdeck").mkdir(parents=True)
    (tmp_path / "config" / "diffdeck" / "config.yaml").write_text(settings)
    one_line(diffdeck("--engine", "local", "--new", "new-session", cwd=tmp_path), f"config.yaml: {message}")
    assert not (tmp_path / "new-session").exists()


def test_a_daemon_lock_that_is_a_symbolic_link_is_never_followed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("DIFFDECK_SOCKET", str(run / "engine.sock"))
    target = tmp_path / "precious"
    target.write_text("not a lock")
    os.symlink(target, run / "engine.sock.lock")
    one_line(diffdeck("serve", "--foreground", cwd=tmp_path), "engine.sock.lock: it is a symbolic link")
    assert target.read_text() == "not a lock" and os.readlink(run / "engine.sock.lock") == str(target)
    assert sorted(p.name for p in run.iterdir()) == ["engine.sock.lock"]


@pytest.mark.slow
def test_a_recorded_image_replaced_by_a_decompression_bomb_is_altered_not_a_traceback(tmp_path):
    example = Path(__file__).resolve().parents[2] / "sessions" / "examples" / "demo-red-circle"
    shutil.copytree(example, tmp_path / "s")
    (bomb,) = [p for p in (tmp_path / "s" / "images").iterdir() if p.name.endswith("-00-1.png")]
    bomb.write_bytes(png(header=struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)))
    result = diffdeck("replay", "s", "--check", "--into", "checks", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"job-0001 image 0 .*altered", result.stdout), result.stdout
