"""A real Orthanc (Debian orthanc + orthanc-dicomweb) in a temp dir on free ports, storescu helpers.

Orthanc has no bind option (it listens on every interface); tests only ever talk to it on
127.0.0.1, and its config refuses remote HTTP access and unknown DICOM peers.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REQUIRE_SYSTEM, require_tool

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def session():
    import requests

    s = requests.Session()
    s.trust_env = False  # loopback only: never through a proxy
    return s


@dataclass
class Orthanc:
    proc: subprocess.Popen
    http_port: int
    dicom_port: int
    aet: str
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, files, auth=None) -> set[str]:
        """POST files to /instances (Orthanc REST); returns the study UIDs stored."""
        s = session()
        s.auth = auth
        studies = set()
        for f in files:
            r = s.post(f"{self.url}/instances", data=Path(f).read_bytes(), timeout=30)
            r.raise_for_status()
            info = s.get(f"{self.url}/instances/{r.json()['ID']}/simplified-tags", timeout=30).json()
            studies.add(info["StudyInstanceUID"])
        return studies

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_orthanc(folder: Path, *, aet: str = "ORTHANC", modalities: dict | None = None,
                  extra: dict | None = None) -> Orthanc:
    exe = require_tool("Orthanc", "orthanc")
    if not DICOMWEB_PLUGIN.exists():
        import pytest

        msg = f"Orthanc DICOMweb plugin not installed ({DICOMWEB_PLUGIN}): sudo apt-get install -y orthanc-dicomweb"
        pytest.fail(msg) if REQUIRE_SYSTEM else pytest.skip(msg)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": "surgitwin-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomModalities": modalities or {}, "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False, "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True, "UnknownSopClassAccepted": True, "StorageCompression": False,
        "SaveJobs": False, "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full"},
    }
    cfg.update(extra or {})  # e.g. AuthenticationEnabled + RegisteredUsers
    (folder / "orthanc.json").write_text(json.dumps(cfg, indent=1))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TCP_NODELAY": "1"}, cwd=folder)
    o = Orthanc(proc, http_port, dicom_port, aet, folder)
    deadline = time.monotonic() + 30
    s = session()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if s.get(f"{o.url}/system", timeout=1).status_code in (200, 401):  # 401: up, with authentication
                return o
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            o.stop()
            raise TimeoutError("Orthanc did not answer GET /system within 30 s")
        time.sleep(0.05)


def storescu(port: int, paths, *, calling: str = "STORESCU", called: str = "SURGITWIN", timeout: float = 120.0,
             extra=()) -> subprocess.CompletedProcess:
    """dcmtk storescu to 127.0.0.1:port (TCP_NODELAY=1: 40x faster for small instances)."""
    exe = require_tool("storescu", "dcmtk")
    cmd = [exe, "-aet", calling, "-aec", called, "+sd", "+r", "-nh", *extra, "127.0.0.1", str(port),
           *[str(p) for p in paths]]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, "TCP_NODELAY": "1"})


def storescu_popen(port: int, paths, *, calling: str = "STORESCU", called: str = "SURGITWIN") -> subprocess.Popen:
    exe = require_tool("storescu", "dcmtk")
    cmd = [exe, "-aet", calling, "-aec", called, "+sd", "+r", "-nh", "127.0.0.1", str(port), *[str(p) for p in paths]]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
