"""DICOMweb authentication (issue 12 item 12): HTTP basic against a real Orthanc with
authentication enabled; bearer token, client certificate and a custom CA against a local HTTPS
server; credentials from options, files or the environment, never printed."""
from __future__ import annotations

import http.server
import ssl
import threading

import pytest

import batch_helpers as bh
import pacs_helpers as ph
from pipeline.cli import main
from pipeline.pacs.dicomweb import HttpAuth, PacsError, pull_study

USER, PASSWORD = "alice", "s3cret-Pw-771"


@pytest.fixture(autouse=True)
def _no_retries(monkeypatch):
    import pipeline.pacs.dicomweb as dw

    monkeypatch.setattr(dw, "HTTP_MAX_ATTEMPTS", 1)  # failures are the point here: no back-off


@pytest.fixture(scope="module")
def orthanc_auth(tmp_path_factory):
    o = ph.start_orthanc(tmp_path_factory.mktemp("orthanc_auth"),
                         extra={"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}})
    files = bh.write_tiny_series(tmp_path_factory.mktemp("auth_src"), 3, tag="auth", patient_n=70)
    (study,) = o.upload(files, auth=(USER, PASSWORD))
    yield o, study
    o.stop()


@pytest.mark.slow
def test_basic_auth_from_file_env_or_url_and_never_printed(orthanc_auth, tmp_path, capsys, monkeypatch):
    o, study = orthanc_auth
    with pytest.raises(PacsError) as e:
        pull_study(o.dicomweb, study, tmp_path / "none")
    assert "HTTP 401" in str(e.value) and "authentication" in str(e.value)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    rc = main(["pull", "--dicomweb", o.dicomweb, "--study", study, "--out", str(tmp_path / "a"), "--no-run",
               "--dicomweb-user", USER, "--dicomweb-password-file", str(pw)])
    assert rc == 0 and len(list((tmp_path / "a").rglob("*.dcm"))) == 3
    monkeypatch.setenv("SURGITWIN_DICOMWEB_USER", USER)
    monkeypatch.setenv("SURGITWIN_DICOMWEB_PASSWORD", PASSWORD)
    rep = pull_study(o.dicomweb, study, tmp_path / "b", auth=HttpAuth.from_sources())
    assert len(rep.files) == 3
    monkeypatch.delenv("SURGITWIN_DICOMWEB_USER")
    monkeypatch.delenv("SURGITWIN_DICOMWEB_PASSWORD")
    # credentials inside the URL work and never appear in a message
    with_pw = o.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    assert len(pull_study(with_pw, study, tmp_path / "c").files) == 3
    rc = main(["pull", "--dicomweb", with_pw, "--study", "1.2.3.4.5", "--out", str(tmp_path / "d"), "--no-run"])
    out = capsys.readouterr()
    assert rc == 1 and "not on the server" in out.err
    assert PASSWORD not in out.err + out.out
    bad = with_pw.replace(str(o.http_port), str(ph.free_port()))  # nothing listens there
    with pytest.raises(PacsError) as e:
        pull_study(bad, study, tmp_path / "e")
    assert PASSWORD not in str(e.value) and "ConnectionError" in str(e.value)
    assert PASSWORD not in repr(HttpAuth.from_sources(user=USER, password_file=str(pw)))


def _pki(d):
    from test_pacs_listener import _pki as pki

    return pki(d)


class _Echo(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Echo.seen.append({"auth": self.headers.get("Authorization"),
                           "cert": bool(self.connection.getpeercert())})
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.mark.slow
def test_bearer_token_client_certificate_and_custom_ca(tmp_path, monkeypatch):
    pki = _pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server.crt"], pki["server.key"])
    ctx.load_verify_locations(cafile=pki["ca.crt"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://localhost:{srv.server_address[1]}/dicom-web"
    token = tmp_path / "token"
    token.write_text("tok-98765-secret")
    try:
        # the server's certificate is signed by our own CA: without --dicomweb-ca it is not trusted
        with pytest.raises(PacsError) as e:
            pull_study(url, "1.2.3", tmp_path / "x", auth=HttpAuth.from_sources(token_file=str(token)))
        assert "TLS" in str(e.value) and "tok-98765-secret" not in str(e.value)
        auth = HttpAuth.from_sources(token_file=str(token), cert=pki["client.crt"], key=pki["client.key"],
                                     ca=pki["ca.crt"])
        with pytest.raises(PacsError, match="not on the server"):  # reached it: QIDO answered []
            pull_study(url, "1.2.3", tmp_path / "x", auth=auth)
        assert _Echo.seen[-1] == {"auth": "Bearer tok-98765-secret", "cert": True}
    finally:
        srv.shutdown()
