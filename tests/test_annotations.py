"""The durable annotation store: revisions, annotators, conflicts, validation, atomic writes under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from proqual.annotations import (
    AnnotationStore,
    atomic_write_json,
    read_json,
    remove_stale_temporaries,
)
from proqual.errors import InputError, ValidationError


def need_labels():
    """Validation uses the shared annotation schema (proqual.labels)."""
    pytest.importorskip("proqual.labels", reason="proqual.labels (annotation schema) not landed yet")


ANCHOR = "10000_1000000_t2w"


def annotation(annotator="dr_a", pirads=4, isup=2, study_q=3, **extra):
    data = {
        "pirads": pirads,
        "isup": isup,
        "piqual": {"T2W": 3, "ADC": 2, "HBV": 2, "study": study_q},
        "annotator": annotator,
    }
    data.update(extra)
    return data


@pytest.fixture()
def store(tmp_path):
    need_labels()
    return AnnotationStore(tmp_path / "store")


# ------------------------------------------------------------------------------------ revisions
def test_submit_keeps_every_revision_with_annotator_and_time(store):
    r1 = store.submit(ANCHOR, annotation("dr_a", pirads=3))
    r2 = store.submit(ANCHOR, annotation("dr_a", pirads=4))
    assert (r1.revision, r2.revision) == (1, 2)
    revs = store.revisions(ANCHOR)
    assert [r.annotation["pirads"] for r in revs] == [3, 4]
    assert all(r.annotator == "dr_a" and r.time.endswith("+00:00") for r in revs)
    assert (store.root / "revisions" / ANCHOR / "1.json").is_file()
    assert (store.root / "revisions" / ANCHOR / "2.json").is_file()
    # the annotator's current annotation is their latest
    assert store.current(ANCHOR)["dr_a"].revision == 2
    summary = store.summary(ANCHOR)
    assert summary.labeled and not summary.conflict
    assert store.anchors() == [ANCHOR]


def test_two_annotators_never_overwrite_each_other(store):
    store.submit(ANCHOR, annotation("dr_a", pirads=4, isup=2))
    store.submit(ANCHOR, annotation("dr_b", pirads=5, isup=2))
    summary = store.summary(ANCHOR)
    assert len(summary.revisions) == 2
    assert set(summary.current) == {"dr_a", "dr_b"}
    assert summary.current["dr_a"].annotation["pirads"] == 4
    assert summary.current["dr_b"].annotation["pirads"] == 5
    assert summary.conflict is True
    assert summary.disagreements["pirads"] == {"dr_a": 4, "dr_b": 5}
    assert summary.agreed["isup"] == 2
    assert store.conflicts() == [ANCHOR]
    # dr_b revises to agree: conflict gone, history still has all three
    store.submit(ANCHOR, annotation("dr_b", pirads=4, isup=2))
    summary = store.summary(ANCHOR)
    assert len(summary.revisions) == 3 and not summary.conflict
    assert summary.agreed["pirads"] == 4


def test_annotator_may_come_from_the_caller(store):
    data = annotation()
    data.pop("annotator")
    rev = store.submit(ANCHOR, data, annotator="dr_c")
    assert rev.annotator == "dr_c" and rev.annotation["annotator"] == "dr_c"


def test_missing_or_contradicting_annotator_is_rejected(store):
    data = annotation()
    data.pop("annotator")
    with pytest.raises(ValidationError) as err:
        store.submit(ANCHOR, data)
    assert err.value.field == "annotator"
    with pytest.raises(ValidationError) as err:
        store.submit(ANCHOR, annotation("dr_a"), annotator="dr_b")
    assert err.value.field == "annotator"
    assert store.revisions(ANCHOR) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pirads": 7}, "pirads"),
        ({"isup": 9}, "isup"),
        ({"piqual": {"T2W": 5}}, "piqual"),
    ],
)
def test_invalid_values_name_the_field_and_store_nothing(store, change, field):
    store.submit(ANCHOR, annotation("dr_a"))
    bad = annotation("dr_b")
    bad.update(change)
    with pytest.raises(ValidationError) as err:
        store.submit(ANCHOR, bad)
    assert field in err.value.field
    assert len(store.revisions(ANCHOR)) == 1
    assert sorted(p.name for p in (store.root / "revisions" / ANCHOR).iterdir()) == ["1.json"]


@pytest.mark.parametrize("anchor", ["../escape", "a/b", "", ".hidden"])
def test_anchor_ids_cannot_escape_the_store(store, anchor):
    with pytest.raises(ValidationError) as err:
        store.submit(anchor, annotation())
    assert err.value.field == "anchor"


def test_concurrent_submits_get_distinct_revision_numbers(store, tmp_path):
    """Threads here and a second process submit at once: every revision kept, numbers 1..N."""
    code = textwrap.dedent(
        f"""
        from proqual.annotations import AnnotationStore
        s = AnnotationStore({str(store.root)!r})
        for i in range(8):
            s.submit({ANCHOR!r}, {{"pirads": 3, "isup": 1, "annotator": "proc"}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    threads = [
        threading.Thread(target=lambda k=k: [store.submit(ANCHOR, annotation(f"t{k}")) for _ in range(4)])
        for k in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(timeout=60) == 0
    revs = store.revisions(ANCHOR)
    assert [r.revision for r in revs] == list(range(1, 8 + 12 + 1))
    assert sum(r.annotator == "proc" for r in revs) == 8


# ------------------------------------------------------------------------------------ atomicity
_PAUSE_IN_FSYNC = """
import os, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
_real = os.fsync
def paused_fsync(fd):
    marker.write_text("writing")   # the new bytes are written, not yet renamed into place
    time.sleep(60)
os.fsync = paused_fsync
"""


def _run_until_marker(code: str, marker: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_IN_FSYNC + code, str(marker)])
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, "the writer exited before reaching the write"
        assert time.monotonic() < deadline, "the writer never reached the write"
        time.sleep(0.02)
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_kill9_mid_overwrite_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "final" / "study.json"
    atomic_write_json(target, {"version": 1, "payload": "x" * 1000})
    marker = tmp_path / "marker"
    code = f"""
from proqual.annotations import atomic_write_json
atomic_write_json({str(target)!r}, {{"version": 2, "payload": "y" * 2_000_000}})
"""
    proc = _run_until_marker(code, marker)
    temporaries = list(target.parent.glob("*.tmp"))
    assert temporaries and temporaries[0].stat().st_size > 1_000_000  # killed with the new bytes written
    _kill9(proc)
    assert read_json(target) == {"version": 1, "payload": "x" * 1000}
    assert remove_stale_temporaries(target.parent, older_than_s=0) == 1
    assert [p.name for p in target.parent.iterdir()] == ["study.json"]


def test_kill9_mid_submit_keeps_history_and_the_store_usable(tmp_path):
    need_labels()
    root = tmp_path / "store"
    store = AnnotationStore(root)
    store.submit(ANCHOR, annotation("dr_a", pirads=3))
    marker = tmp_path / "marker"
    code = f"""
from proqual.annotations import AnnotationStore
AnnotationStore({str(root)!r}).submit({ANCHOR!r}, {{"pirads": 5, "isup": 3, "annotator": "dr_b", "comment": "killed mid-write"}})
"""
    proc = _run_until_marker(code, marker)  # the child holds the store lock while it pauses
    _kill9(proc)
    reopened = AnnotationStore(root)
    revs = reopened.revisions(ANCHOR)
    assert [(r.revision, r.annotator, r.annotation["pirads"]) for r in revs] == [(1, "dr_a", 3)]
    assert not reopened.summary(ANCHOR).conflict
    # the lock died with the writer; the next submission is revision 2
    assert reopened.submit(ANCHOR, annotation("dr_b", pirads=5)).revision == 2
    assert [r.annotator for r in reopened.revisions(ANCHOR)] == ["dr_a", "dr_b"]


def test_kill9_at_random_moments_never_leaves_a_partial_file(tmp_path):
    """A writer rewrites one file with two large versions in a loop; killed at arbitrary moments."""
    target = tmp_path / "label.json"
    versions = [{"v": k, "data": str(k) * 400_000} for k in (1, 2)]
    atomic_write_json(target, versions[0])
    code = textwrap.dedent(
        f"""
        import json
        from proqual.annotations import atomic_write_json
        versions = json.loads(open({str(tmp_path / "versions.json")!r}).read())
        k = 0
        while True:
            atomic_write_json({str(target)!r}, versions[k % 2]); k += 1
        """
    )
    (tmp_path / "versions.json").write_text(json.dumps(versions))
    for delay in (0.25, 0.4, 0.55, 0.7, 0.85):
        proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        _kill9(proc)
        assert read_json(target) in versions


def test_unreadable_json_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"pirads": ')
    with pytest.raises(InputError) as err:
        read_json(bad)
    assert "bad.json" in str(err.value)
