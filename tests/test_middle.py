"""The middle of the data path, in-process: Pipeline, DicomSource, ResultWriter, Spool, the SCP
handler (over a real pynetdicom association), control handlers. Real SQLite, real ONNX Runtime,
real files; nothing here starts a daemon, so a failure points at one module."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.batcher.dynamic import DynamicBatcher
from edged.batcher.served import ServedModel
from edged.config.schema import DicomConfig
from edged.control.handlers import control_handlers
from edged.control.server import Peer
from edged.models.manifest import BatchingSpec, load_manifest
from edged.mqtt.messages import Topics
from edged.outbox.db import Database
from edged.outbox.emitter import EventEmitter
from edged.outbox.store import Outbox
from edged.outbox.writer import ResultWriter
from edged.pipeline import Pipeline
from edged.preprocess.errors import PixelError
from edged.privacy import Pseudonymizer
from edged.sources.dicom.scp import StorageSCP
from edged.sources.dicom.source import DicomSource
from edged.sources.work import WorkItem
from edged.spool.spool import Spool, SpoolFull
from helpers import send_file, small_cr

TOPICS = Topics("edged/v1", "unit")


@pytest.fixture
def served(tiny_repo) -> ServedModel:
    model = load_manifest(tiny_repo / "chexnet-tiny")
    backend = OnnxRuntimeBackend(model.onnx_path, threads=1)
    backend.load()
    batcher = DynamicBatcher(model.name, backend, BatchingSpec(max_batch_size=4, max_queue_delay_ms=20,
                                                               max_queue_size=4))
    yield ServedModel(model, backend, batcher, backend.info, "test")
    backend.close()


class Sink:
    """Records outcomes as the pipeline reports them."""

    def __init__(self) -> None:
        self.completed_list: list[tuple] = []
        self.failed_list: list[tuple] = []
        self.dropped_list: list[str] = []

    def completed(self, item, model, c, pre, last, incomplete) -> None:
        self.completed_list.append((item.key, model.name, c, last, incomplete))

    def failed(self, item, reason, detail, transient) -> None:
        self.failed_list.append((item.key, reason, transient))

    def dropped(self, item, model) -> None:
        self.dropped_list.append(item.key)


def item(key: str, sink, prepare, live: bool = False) -> WorkItem:
    return WorkItem(key, ("chexnet-tiny",), {"calling_ae": "T"}, prepare, sink, live=live)


def tensor(_manifest) -> tuple[np.ndarray, dict]:
    return np.zeros((3, 64, 64), np.float32), {"decode_ms": 0.0, "transform_ms": 0.0}


def broken(_manifest):
    raise PixelError("decode_failed", "no")


def wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- Pipeline -----------------------------------------------------------------------------
def test_pipeline_hands_every_outcome_to_the_items_sink(served):
    sink = Sink()
    p = Pipeline({served.name: served})
    p.start()

    def surprising(_m):
        raise KeyError("a bug")

    def hungry(_m):
        raise MemoryError

    for key, prep in (("ok", tensor), ("pix", broken), ("bug", surprising), ("mem", hungry)):
        p.submit(item(key, sink, prep))
    wait(lambda: len(sink.completed_list) == 1 and len(sink.failed_list) == 3)
    p.stop()
    (key, model, c, last, incomplete), = sink.completed_list
    assert (key, model, last, incomplete) == ("ok", "chexnet-tiny", True, False) and c.outputs["logits"].shape == (14,)
    assert sorted(sink.failed_list) == [("bug", "internal_error", False), ("mem", "out_of_memory", True),
                                        ("pix", "decode_failed", False)]


def test_live_items_are_dropped_when_the_queue_is_full_and_durable_ones_wait(served):
    sink = Sink()
    release = threading.Event()
    real_infer = served.backend.infer
    served.backend.infer = lambda b: (release.wait(10), real_infer(b))[1]  # a slow device
    p = Pipeline({served.name: served})
    p.start()
    made: list[str] = []

    def counted(m):
        made.append("tensor")
        return tensor(m)

    for i in range(12):
        p.submit(item(f"frame{i}", sink, counted, live=True))
    wait(lambda: p.pending() == 0)
    time.sleep(0.2)
    dropped = len(sink.dropped_list)
    assert dropped >= 12 - 4 - 4  # at most one batch in the backend and one full queue
    assert len(made) == 12 - dropped  # a frame the full queue drops is never made into a tensor
    release.set()
    wait(lambda: len(sink.completed_list) == 12 - dropped)
    p.stop()


def test_a_live_item_that_fails_to_prepare_gives_its_queue_room_back(served):
    sink = Sink()
    p = Pipeline({served.name: served})
    p.start()
    for i in range(10):  # more than the queue holds: each held room while it was being prepared
        p.submit(item(f"bad{i}", sink, broken, live=True))
    wait(lambda: len(sink.failed_list) == 10)
    p.stop()
    assert not sink.dropped_list
    assert [served.try_reserve() for _ in range(5)] == [True] * 4 + [False]  # all 4 places free again
    for _ in range(4):
        served.release()


def test_a_sink_that_raises_does_not_leak_queue_room(served):
    """A bug in a sink (here: failed() raises) is logged by the worker; the room the live item
    held is still given back, or every later frame would be dropped for good."""
    class Raising(Sink):
        def failed(self, item, reason, detail, transient) -> None:
            super().failed(item, reason, detail, transient)
            raise RuntimeError("a sink bug")

    sink = Raising()
    p = Pipeline({served.name: served})
    p.start()
    for i in range(6):
        p.submit(item(f"bad{i}", sink, broken, live=True))
    wait(lambda: len(sink.failed_list) == 6)
    p.stop()
    assert [served.try_reserve() for _ in range(5)] == [True] * 4 + [False]


# -- Spool --------------------------------------------------------------------------------
def test_spool_reserve_is_not_counted_twice(small_fs):
    """The received file is already on the spool's filesystem: the rename needs no more room."""
    fs = small_fs(32 << 20)
    spool = Spool(fs / "spool", quota_bytes=1 << 30)
    received = spool.incoming / "x.part"
    size = 8 << 20
    received.write_bytes(b"\0" * size)
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    spool.reserve_free_bytes = free - size // 2  # the reserve still holds once the file is in
    assert spool.adopt("a" * 32, received)  # old code: free - size < reserve -> SpoolFull with room left
    spool.reserve_free_bytes = free + 1
    received.write_bytes(b"\0" * 16)
    with pytest.raises(SpoolFull):
        spool.adopt("b" * 32, received)


def test_quarantine_is_bounded_and_not_work(tmp_path):
    spool = Spool(tmp_path / "spool", quota_bytes=1 << 30, quarantine_bytes=3000, quarantine_days=1)
    for i in range(3):
        f = tmp_path / f"in{i}"
        f.write_bytes(b"\0" * 1200)
        key = f"{i:032x}"
        assert spool.adopt(key, f)
        spool.quarantine(key)
        time.sleep(0.01)
    assert spool.quarantined() == [f"{1:032x}", f"{2:032x}"]  # the oldest went over the cap
    assert spool.pending() == []
    assert Spool(tmp_path / "spool", quota_bytes=1 << 30).pending() == []  # a restart does not resurrect


# -- DicomSource + ResultWriter -----------------------------------------------------------
class Stack:
    """DicomSource, pipeline and writer over real SQLite and a real spool."""

    def __init__(self, tmp_path: Path, served: ServedModel, max_attempts: int = 2):
        self.key = Pseudonymizer(b"k" * 32)
        self.outbox = Outbox(Database(tmp_path / "edged.db"))
        self.events = EventEmitter(self.outbox, TOPICS)
        self.spool = Spool(tmp_path / "spool", 1 << 30)
        self.pipeline = Pipeline({served.name: served})
        self.source = DicomSource(self.spool, self.outbox, self.events, self.key, [served.manifest],
                                  self.pipeline, max_attempts=max_attempts, retry_backoff_s=0.2)
        self.writer = ResultWriter(self.outbox, self.events, self.key, TOPICS, self.source)
        self.source.attach(self.writer)

    def start(self) -> "Stack":
        self.writer.start()
        self.pipeline.start()
        self.source.start()
        return self

    def stop(self) -> None:
        self.source.stop()
        self.pipeline.stop()
        self.writer.stop()

    def spool_file(self, path: Path) -> str:
        key = self.key.pseudonym("instance", str(dcmread(path).SOPInstanceUID))
        self.spool.adopt(key, path)
        self.outbox.mark_spooled(key, "", "RECOVERY")
        return key

    def messages(self) -> list[dict]:
        import json

        rows = self.outbox.db.connect().execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
        return [dict(json.loads(r["payload"]), topic=r["topic"]) for r in rows]


def test_recovery_skips_with_the_same_reason_and_message_id_as_reception(tmp_path, served):
    stack = Stack(tmp_path, served)
    key = stack.spool_file(small_cr(tmp_path / "lat.dcm", ViewPosition="LL"))
    stack.start()
    wait(lambda: stack.outbox.instance(key)[0] == "skipped")
    stack.stop()
    (event,) = stack.messages()
    assert event["type"] == "skipped" and event["reason"] == "view_position"
    assert event["message_id"] == stack.key.message_id("skipped", key)
    assert "chexnet-tiny: view_position: LL not in PA/AP" in event["detail"]
    assert not stack.spool.pending()


def test_results_are_committed_with_the_ledger_before_the_file_goes(tmp_path, served):
    stack = Stack(tmp_path, served)
    key = stack.spool_file(small_cr(tmp_path / "cr.dcm"))
    stack.start()
    wait(lambda: stack.outbox.instance(key)[0] == "done")
    stack.stop()
    (result,) = stack.messages()
    assert result["topic"] == "edged/v1/unit/results/chexnet-tiny" and len(result["scores"]) == 14
    assert result["message_id"] == stack.key.message_id("result", "chexnet-tiny", served.manifest.onnx.sha256, key)
    assert not stack.spool.pending()
    archived = stack.outbox.db.connect().execute("SELECT instance FROM results").fetchall()
    assert [r[0] for r in archived] == [key]


def test_backend_failures_are_retried_then_end_in_an_error_event_and_quarantine(tmp_path, served):
    stack = Stack(tmp_path, served, max_attempts=2)
    calls = []

    def failing(batch):
        calls.append(len(batch))
        from edged.backends.base import BackendError
        raise BackendError("device lost")

    served.backend.infer = failing
    key = stack.spool_file(small_cr(tmp_path / "cr.dcm"))
    stack.start()
    wait(lambda: stack.outbox.instance(key)[0] == "failed")
    stack.stop()
    assert len(calls) == 2  # one retry after backoff, then the final attempt's failure is recorded
    (event,) = stack.messages()
    assert (event["type"], event["reason"], event["model"]) == ("error", "inference_failed", "chexnet-tiny")
    assert stack.spool.quarantined() == [key] and not stack.spool.pending()


def test_an_image_that_keeps_killing_the_process_is_given_up(tmp_path, served):
    """Attempts are counted before each one starts: three restarts in the middle of the same
    image (a decoder segfault) end in ``too_many_attempts``, not in a crash loop."""
    stack = Stack(tmp_path, served, max_attempts=2)
    key = stack.spool_file(small_cr(tmp_path / "cr.dcm"))
    stack.outbox.begin_attempt(key)
    stack.outbox.begin_attempt(key)  # two earlier runs died while processing it
    stack.start()
    wait(lambda: stack.outbox.instance(key)[0] == "failed")
    stack.stop()
    (event,) = stack.messages()
    assert event["reason"] == "too_many_attempts" and stack.spool.quarantined() == [key]


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # every last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def on_small_disk(stack: Stack, directory: Path) -> None:
    stack.outbox = Outbox(Database(directory / "edged.db"))
    stack.events.outbox = stack.writer.outbox = stack.source.outbox = stack.source.attempts = stack.outbox


def test_a_full_disk_stalls_the_writer_without_losing_results(tmp_path, served, small_fs):
    """A real full filesystem under the database while a batch is in the backend: the writer
    retries with backoff and says why, the image stays in the spool, and once there is room
    its result is written."""
    db_dir = small_fs(4 << 20)
    stack = Stack(tmp_path, served)
    on_small_disk(stack, db_dir)
    key = stack.spool_file(small_cr(tmp_path / "cr.dcm"))
    in_backend, go_on = threading.Event(), threading.Event()
    real_infer = served.backend.infer
    served.backend.infer = lambda b: (in_backend.set(), go_on.wait(10), real_infer(b))[2]
    stack.start()
    assert in_backend.wait(10)
    filler = fill(db_dir)
    go_on.set()
    wait(lambda: stack.writer.stalled_reason is not None)
    assert "full" in stack.writer.stalled_reason and stack.spool.pending() == [key] and stack.writer.alive()
    filler.unlink()
    wait(lambda: stack.outbox.instance(key)[0] == "done", timeout=30)
    assert stack.writer.stalled_reason is None
    stack.stop()
    assert [m.get("type", "result") for m in stack.messages()] == ["result"]


def test_an_image_offered_on_a_full_disk_is_offered_again_soon(tmp_path, served, small_fs):
    """Even counting the attempt needs the disk: the offer is retried after the backoff, not
    at the next 30-second rescan, and no attempt is counted for it."""
    db_dir = small_fs(4 << 20)
    stack = Stack(tmp_path, served)
    on_small_disk(stack, db_dir)
    key = stack.spool_file(small_cr(tmp_path / "cr.dcm"))
    filler = fill(db_dir)
    stack.start()
    time.sleep(0.5)
    assert stack.spool.pending() == [key]
    filler.unlink()
    wait(lambda: stack.outbox.instance(key)[0] == "done", timeout=5)
    stack.stop()


# -- StorageSCP over a real association ---------------------------------------------------
def test_scp_handler_spools_skips_and_refuses_with_the_right_statuses(tmp_path, served):
    stack = Stack(tmp_path, served)
    import tempfile

    tempfile.tempdir = str(stack.spool.incoming)
    try:
        stack.start()
        scp = StorageSCP(DicomConfig(bind="127.0.0.1", port=0), stack.spool, stack.outbox, stack.key, stack.source,
                         stack.events)
        scp.start()
        try:
            assert send_file(scp.port, small_cr(tmp_path / "a.dcm")) == 0x0000
            assert send_file(scp.port, small_cr(tmp_path / "b.dcm", BodyPartExamined="KNEE")) == 0x0000
            bad = tmp_path / "c.dcm"
            bad.write_bytes(small_cr(tmp_path / "c0.dcm").read_bytes()[:2000])  # truncated mid-header
            assert send_file(scp.port, bad) == 0xC000
            wait(lambda: len(stack.messages()) == 3)
        finally:
            scp.stop()
    finally:
        tempfile.tempdir = None
        stack.stop()
    kinds = sorted((m.get("type") or "result", m.get("reason", "")) for m in stack.messages())
    assert kinds == [("rejected", "truncated"), ("result", ""), ("skipped", "body_part")]


# -- control handlers ---------------------------------------------------------------------
class Target:
    """A ControlTarget: the whole interface handlers may use, recording what they do."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.modes = [{"id": 0, "name": "MAXN"}, {"id": 2, "name": "15W"}]
        self.retuned = 0
        self.republished = 0

    def snapshot(self) -> dict:
        return {"state": "online", "healthy": True}

    def refresh_power_mode(self):
        return self.modes[0], self.modes[1]

    def retune(self):
        self.retuned += 1
        return {"m": {"max_batch_size": 2, "max_queue_delay_ms": 5.0}}

    def emit_event(self, type_, reason, **fields):
        self.events.append((type_, reason, fields))

    def republish_status(self):
        self.republished += 1


def test_control_handlers_use_only_the_narrow_interface():
    target = Target()
    handlers = control_handlers(target)
    peer = Peer(pid=1, uid=0, gid=0, user="root")
    assert handlers["status"]({}, peer)["healthy"] is True
    out = handlers["power.changed"]({"who": "tech", "to": {"id": 2, "name": "15W"}, "outcome": "ok"}, peer)
    assert out["mode"] == {"id": 2, "name": "15W"} and target.retuned == 1 and target.republished == 1
    (type_, reason, fields), = target.events
    assert (type_, reason) == ("power", "ok") and "tech switched the power mode 0 MAXN → 2 15W" in fields["detail"]
    handlers["power.clocks"]({"on": True}, peer)
    assert target.events[-1][1] == "clocks_on"


# -- decode processes ---------------------------------------------------------------------
def test_a_decoder_process_that_dies_fails_the_image_transiently_and_the_pool_recovers(tiny_repo, tmp_path):
    """A decoder crashing on a hostile codestream takes its worker process down, not the daemon:
    that image gets a transient failure (retried within its attempt limit), the next one works."""
    import signal

    from edged.preprocess.errors import TransientError
    from edged.preprocess.pool import DecodePool
    from helpers import dicom_file

    manifest = load_manifest(tiny_repo / "chexnet-tiny").manifest
    pool = DecodePool(1)
    pool.start()
    try:
        got: list[BaseException] = []

        def decode_j2k() -> None:
            try:
                pool.prepare(dicom_file("RG1_J2KR.dcm"), manifest.input, manifest.preprocess)
            except BaseException as exc:  # noqa: BLE001
                got.append(exc)

        t = threading.Thread(target=decode_j2k)
        t.start()
        time.sleep(0.15)  # inside the ~0.5 s JPEG 2000 decode
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert len(got) == 1 and isinstance(got[0], TransientError) and got[0].reason == "decoder_crashed"
        tensor, timings = pool.prepare(small_cr(tmp_path / "cr.dcm"), manifest.input, manifest.preprocess)
        assert tensor.shape == (3, 64, 64) and pool.restarts == 1 and timings["decode_ms"] >= 0
    finally:
        pool.close()


def test_decode_processes_start_under_a_tmpdir_too_deep_for_a_unix_socket(tiny_repo, tmp_path):
    """multiprocessing puts the forkserver's socket under TMPDIR; a deep TMPDIR made that path
    longer than an AF_UNIX address holds and the pool could not start (``edged demo`` under the
    parallel test runner's deeper temporary directories). The pool uses /tmp then, and its
    directory is gone when the process exits."""
    import subprocess
    import sys

    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from multiprocessing import process\n"
        "from edged.models.manifest import load_manifest\n"
        "from edged.preprocess.pool import DecodePool\n"
        "m = load_manifest(Path(sys.argv[1])).manifest\n"
        "pool = DecodePool(1)\n"
        "pool.start()\n"
        "tensor, _ = pool.prepare(Path(sys.argv[2]), m.input, m.preprocess)\n"
        "pool.close()\n"
        "print(tensor.shape, process.current_process()._config['tempdir'])\n"
    )
    image = small_cr(tmp_path / "cr.dcm")
    run = subprocess.run([sys.executable, "-c", probe, str(tiny_repo / "chexnet-tiny"), str(image)],
                         env={**os.environ, "TMPDIR": str(deep)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    shape, tempdir = run.stdout.rsplit(" ", 1)
    assert shape == "(3, 64, 64)"
    assert tempdir.strip().startswith("/tmp/pymp-") and not Path(tempdir.strip()).exists()
    assert list(deep.iterdir()) == []
