"""The session loader against hundreds of mangled records: a SessionError naming the fault,
or a session every reader can use; never a traceback, and never a changed file."""

import copy
import json
import tempfile
from pathlib import Path

import yaml
from diffdeck.engines.record.session import JOURNAL, RECORD, Session, SessionError, summarize
from diffdeck.engines.service.replay import select_jobs
from diffdeck.engines.sets.contact_sheet import contact_sheet
from diffdeck.tui.compare_state import Comparison
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

EXAMPLE = Path(__file__).resolve().parent.parent / "sessions" / "examples" / "demo-ab"  # a set, a pick, a rating
RECORD_DATA = yaml.safe_load((EXAMPLE / RECORD).read_text())
SPEC = {"prompt": "a star", "model": "demo", "seeds": [3], "count": 1}
JOURNAL_EVENTS = [
    {"type": "queued", "job": "job-0002", "spec": SPEC, "position": 0},
    {"type": "started", "job": "job-0002", "queue_wait_s": 0.0, "load_s": 0.1},
    {"type": "image", "job": "job-0002", "image": 0, "seed": 3, "path": "images/job-0002-00-3.png",
     "pixel_sha256": "00" * 32, "timings": {"denoise_s": 0.1}, "peak_memory": 1},
    {"type": "failed", "job": "job-0002", "error": "boom", "worker_crashes": 1},
    {"type": "queued", "job": "job-0002", "spec": SPEC, "position": 0},
    {"type": "queued", "job": "job-0003", "spec": SPEC, "position": 1},
    {"type": "started", "job": "job-0003", "queue_wait_s": 0.0, "load_s": 0.1},
    {"type": "set", "job": None, "set": "set-0002", "kind": "ab", "base": SPEC, "axes": [],
     "variants": [{"label": "A", "changes": {}, "cell": [0], "job": "job-0002"},
                  {"label": "B", "changes": {"steps": 2}, "cell": [1], "job": "job-0003"}]},
    {"type": "pick", "set": "set-0002", "image": 0, "left": "job-0002", "right": "job-0003", "winner": "tie"},
    {"type": "rating", "job": "job-0002", "image": 0, "stars": 3},
]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["../../etc/passwd", "/abs/path.png", "job-0001", "done", "running", "queued"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def paths(tree, prefix=()):
    """Every key path into a nested structure of dicts and lists."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


@st.composite
def mangled_tree(draw, tree):
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, 3))):
        where = list(paths(tree))
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return tree


@st.composite
def mangled_bytes(draw, data: bytes):
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    if how == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + junk + data[at + (len(junk) if how == "overwrite" else 0):]


def journal_bytes(events) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


record_text = yaml.safe_dump(RECORD_DATA, sort_keys=False).encode()
folders = st.one_of(
    mangled_tree(RECORD_DATA).map(lambda r: (yaml.safe_dump(r, sort_keys=False).encode(), b"")),
    mangled_bytes(record_text).map(lambda b: (b, b"")),
    mangled_tree(JOURNAL_EVENTS).map(lambda events: (record_text, journal_bytes(events))),
    mangled_bytes(journal_bytes(JOURNAL_EVENTS)).map(lambda b: (record_text, b)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(folders)
def test_a_mangled_session_is_refused_by_name_or_read_whole(files):
    record, journal = files
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "s"
        (folder / "images").mkdir(parents=True)
        (folder / RECORD).write_bytes(record)
        (folder / JOURNAL).write_bytes(journal)
        try:
            session = Session.open(folder, create=False)
        except SessionError as e:
            assert str(e), "the message names the fault"
            event("refused")
        else:  # every reader of an accepted session works
            event("accepted")
            session.unfinished()
            session.next_job_number()
            session.next_set_number()
            session.image_marks()
            select_jobs(session, None)
            for set_id in session.sets:
                session.wins(set_id)
                contact_sheet(session, set_id)
                comparison = Comparison.of_set(session, {}, set_id)
                comparison.parameter_rows(), comparison.pick(), comparison.wins_text()
        summarize(folder)
        assert (folder / RECORD).read_bytes() == record and (folder / JOURNAL).read_bytes() == journal
        assert {p.name for p in folder.iterdir()} - {"sheets"} == {"images", JOURNAL, RECORD}
