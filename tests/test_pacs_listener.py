"""The C-STORE listener with the real dcmtk storescu as sender: results appear in the manifest,
AE titles are enforced, acknowledged instances survive SIGKILL, 4 x 500 concurrent instances."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

import batch_helpers as bh
import pacs_helpers as ph
from pipeline.batch.manifest import Manifest
from pipeline.batch.runner import BatchOptions
from pipeline.pacs.listener import ListenerOptions, listen

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "pipeline.batch.testing:digest_case"


def _listen_cmd(out: Path, port: int, idle: float, *extra) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "listen", "--out", str(out), "--port", str(port), "--allow",
            "STORESCU", "--idle", str(idle), "--workers", "0", "--progress", "plain", *extra]


def _wait_rows(out: Path, n: int, timeout: float, status: str = "done") -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "manifest.sqlite").exists():
            try:
                rows = Manifest(out, readonly=True).rows()
            except Exception:  # noqa: BLE001 - schema not created yet
                rows = []
            if sum(r["status"] == status for r in rows) >= n:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} '{status}' rows in {out} after {timeout} s")


class _InProcessListener:
    """listen() in a thread with a fake case function; stop() waits for it to finish."""

    def __init__(self, out: Path, idle: float, tls: dict | None = None, **batch):
        self.port = ph.free_port()
        self.ready, self.stop_ev = threading.Event(), threading.Event()
        opts = ListenerOptions(port=self.port, allowed_calling_aets=["STORESCU"], series_idle_s=idle, **(tls or {}))
        bopts = BatchOptions(workers=0, case_fn=DIGEST, **batch)
        self.result = {}
        self.thread = threading.Thread(target=lambda: self.result.update(
            summary=listen(out, opts, bopts, ready=self.ready, stop=self.stop_ev)), daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(20), "listener did not bind"
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_storescu_study_becomes_a_scene_and_unknown_callers_are_refused(tmp_path):
    src = tmp_path / "study"
    files = bh.write_study(src, 40)
    out, port = tmp_path / "listen", ph.free_port()
    proc = subprocess.Popen(_listen_cmd(out, port, 1.0, "--model", "hu_rules"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ph.wait_port(port, 60, proc)
        bad = ph.storescu(port, [src], calling="INTRUDER")
        assert bad.returncode != 0
        assert ph.storescu(port, [src], called="NOTUS").returncode != 0  # wrong called AE title
        assert not any((out / "spool" / "incoming").iterdir())
        ok = ph.storescu(port, [src])
        assert ok.returncode == 0, ok.stdout.decode() + ok.stderr.decode()
        rows = _wait_rows(out, 1, 90)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode()
    (row,) = rows
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert row["study"] == series_uid and row["n_files"] == 32 and row["status"] == "done"
    from pipeline.scene import load_scene

    scene = load_scene(row["outputs"]["scene"], load_meshes=False)
    assert scene.source["series_instance_uid"] == series_uid
    assert {"body", "bone"} <= set(scene.structure_names)
    assert "rejected" in log  # the refused association is logged (without any PHI)
    name, pid, dob = bh.patient(40)
    for needle in (name, name.split("^")[0], pid, dob):
        assert needle.lower() not in log.lower()
        assert not bh.grep_tree(out / "logs", [needle]) and needle.encode() not in (out / "batch.log").read_bytes()


def test_empty_allow_list_is_refused_not_open_to_all(tmp_path):
    from pipeline.errors import SurgitwinError
    from pipeline.pacs.listener import StoreSCP
    from pipeline.pacs.spool import Spool

    with pytest.raises(SurgitwinError, match="no calling AE title is allowed"):
        StoreSCP(Spool(tmp_path / "spool"), ListenerOptions(allowed_calling_aets=[]))


def test_spool_rejects_uids_that_are_not_uids(tmp_path):
    from pipeline.pacs.spool import Spool

    sp = Spool(tmp_path / "spool", idle_s=0.0)
    with pytest.raises(ValueError, match="StudyInstanceUID must be a DICOM UID"):
        sp.store("../../etc", "1.2.3", "1.2.3.4", b"x")
    p = sp.store("1.2.3", "1.2.3.4", "1.2.3.4.5", b"first")
    sp.store("1.2.3", "1.2.3.4", "1.2.3.4.5", b"again")  # re-sent: replaced, not duplicated
    assert p.read_bytes() == b"again" and len(list(p.parent.iterdir())) == 1
    (item,) = sp.poll()
    assert item.key == "1.2.3.4" and item.n_files == 1 and Path(item.input).parent == tmp_path / "spool" / "ready"
    sp.store("1.2.3", "1.2.3.4", "1.2.3.4.6", b"late")  # a late instance re-opens the series (issue 12)
    (late,) = sp.poll()
    assert late.key == "1.2.3.4" and late.n_files == 2 and late.reopened
    assert sorted(f.name for f in Path(late.input).iterdir()) == ["1.2.3.4.5.dcm", "1.2.3.4.6.dcm"]


def test_acknowledged_instances_survive_sigkill_and_restart_finishes_them(tmp_path):
    src = tmp_path / "tiny"
    bh.write_tiny_series(src, 20, tag="durable")
    out, port = tmp_path / "listen", ph.free_port()
    proc = subprocess.Popen(_listen_cmd(out, port, 3600), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ph.wait_port(port, 60, proc)
        r = ph.storescu(port, [src])
        assert r.returncode == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    spooled = list((out / "spool" / "incoming").rglob("*.dcm"))
    assert len(spooled) == 20
    assert sorted(p.read_bytes()[132:] == b"" for p in spooled) == [False] * 20
    # a new listener picks the series up after its idle time and processes it
    with _InProcessListener(out, idle=0.3):
        rows = _wait_rows(out, 1, 30)
    (row,) = rows
    assert row["n_files"] == 20 and row["status"] == "done"
    assert {p.name for p in (out / "spool" / "ready").rglob("*.dcm")} == {
        f"{bh.tiny_sop_uid('durable', i)}.dcm" for i in range(20)}


@pytest.mark.slow
def test_four_concurrent_senders_2000_instances_none_lost_none_duplicated(tmp_path):
    """4 storescu processes at once, 500 tiny instances each (series processing is covered above:
    here the series stay in the spool, the idle time is never reached)."""
    folders = []
    expected: set[str] = set()
    for s in range(4):
        bh.write_tiny_series(tmp_path / f"sender{s}", 500, tag=f"conc{s}", patient_n=s)
        folders.append(tmp_path / f"sender{s}")
        expected |= {bh.tiny_sop_uid(f"conc{s}", i) for i in range(500)}
    assert len(expected) == 2000
    out = tmp_path / "listen"
    with _InProcessListener(out, idle=3600) as lst:
        t0 = time.perf_counter()
        procs = [ph.storescu_popen(lst.port, [f]) for f in folders]
        codes = [p.wait(timeout=120) for p in procs]
        elapsed = time.perf_counter() - t0
        assert codes == [0, 0, 0, 0], [p.stdout.read().decode()[-500:] for p in procs]
    stored = list((out / "spool" / "incoming").rglob("*.dcm"))
    names = [p.name[:-4] for p in stored]
    assert len(names) == 2000 and set(names) == expected  # none lost, none duplicated
    assert not list((out / "spool").rglob(".tmp-*"))
    per_series = sorted(len(list(d.iterdir())) for d in (out / "spool" / "incoming").glob("*/*"))
    assert per_series == [500] * 4
    # stored bytes are what was sent (spot check: first and last instance of each sender)
    for s, f in enumerate(folders):
        for i in (0, 499):
            sent = pydicom.dcmread(f / f"img{i:05d}.dcm")
            (got,) = [p for p in stored if p.name == f"{bh.tiny_sop_uid(f'conc{s}', i)}.dcm"]
            assert pydicom.dcmread(got).PixelData == sent.PixelData
    print(f"\n4 x 500 instances over 4 concurrent associations: {elapsed:.1f} s, {2000 / elapsed:.0f} instances/s")


def _openssl(*args, cwd):
    from tests.conftest import require_tool

    subprocess.run([require_tool("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _pki(d: Path) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=surgitwin test CA", cwd=d)
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext", cwd=d)
    return {k: str(d / k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_tls_listener_takes_only_tls_senders_with_a_ca_signed_certificate(tmp_path):
    """--tls-cert/--tls-key/--tls-ca: dcmtk storescu over TLS with a client certificate is stored;
    the same sender over plain TCP, and over TLS without a certificate, are refused."""
    pki = _pki(tmp_path / "pki")
    src = tmp_path / "series"
    bh.write_tiny_series(src, 3, tag="tls", patient_n=1)
    out = tmp_path / "listen"
    tls = {"tls_cert": pki["server.crt"], "tls_key": pki["server.key"], "tls_ca": pki["ca.crt"]}
    with _InProcessListener(out, idle=3600, tls=tls) as lst:
        plain = ph.storescu(lst.port, [src], timeout=60)
        anon = ph.storescu(lst.port, [src], timeout=60, extra=("+tla", "+cf", pki["ca.crt"]))
        assert plain.returncode != 0 and anon.returncode != 0
        assert not list((out / "spool").rglob("*.dcm"))
        ok = ph.storescu(lst.port, [src], timeout=60,
                         extra=("+tls", pki["client.key"], pki["client.crt"], "+cf", pki["ca.crt"]))
        assert ok.returncode == 0, ok.stdout.decode()[-800:] + ok.stderr.decode()[-800:]
    assert len(list((out / "spool" / "incoming").rglob("*.dcm"))) == 3


def test_tls_settings_errors_name_the_file(tmp_path):
    from pipeline.errors import SurgitwinError
    from pipeline.pacs.listener import server_tls_context

    assert server_tls_context(ListenerOptions()) is None
    with pytest.raises(SurgitwinError, match="both a certificate and its key"):
        server_tls_context(ListenerOptions(tls_cert=str(tmp_path / "c.pem")))
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(SurgitwinError, match=r"c\.pem.*cannot load the TLS certificate"):
        server_tls_context(ListenerOptions(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "c.pem")))
