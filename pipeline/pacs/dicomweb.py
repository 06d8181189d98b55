"""DICOMweb: pull a study (QIDO-RS + WADO-RS) and push a scene's DICOM SEG back (STOW-RS).

``pull_study(url, study_uid, dest)`` lists the study's series with QIDO-RS, retrieves each
with WADO-RS and writes ``dest/<SeriesUID>/<SOPInstanceUID>.dcm`` (temp name + fsync + rename).

``push_scene(scene, url)`` builds the SEG with the project's one SEG writer
(:func:`pipeline.export.dicom_seg.build_segmentation`, also behind ``surgitwin export
--format dicom-seg``) over the scene's source series, and stores it with STOW-RS into the
source study, so it appears in the PACS next to the images it segments. The source headers
come from a local folder (``dicom_dir``, or the scene's recorded input) or, when the images
are not on this machine, from the same server by WADO-RS.

Requests to loopback addresses ignore proxy environment variables (a proxy cannot reach
this machine's loopback); other URLs use the environment as ``requests`` does.

Authentication (:class:`HttpAuth`): HTTP basic, a bearer token, a client certificate and a
custom CA bundle, from options or ``SURGITWIN_DICOMWEB_*`` environment variables; passwords
and tokens only from files or the environment. Credentials written into the URL are moved
out of it; no message, log line or exception text ever carries a password or token.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..batch import phi
from ..errors import SurgitwinError

log = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class PacsError(SurgitwinError):
    """A PACS / DICOMweb request that failed or returned something unusable."""


def _check_uid(uid: str, what: str) -> str:
    uid = str(uid).strip()
    if not _UID.match(uid) or len(uid) > 64:
        raise PacsError(f"{what} must be a DICOM UID (digits and dots, <= 64 characters); found {uid[:80]!r}")
    return uid


ENV_PREFIX = "SURGITWIN_DICOMWEB_"
HTTP_MAX_ATTEMPTS = 5  # per request, with exponential back-off (dicomweb_client's default)


def _read_secret(path, what: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise PacsError(f"cannot read the {what} file: {e.strerror}", path=str(path)) from None


@dataclass
class HttpAuth:
    """How to authenticate to a DICOMweb server; secrets are never printed (``repr`` hides them).

    ``user``/``password``: HTTP basic; ``token``: ``Authorization: Bearer``; ``cert``/``key``:
    a client certificate (PEM); ``ca``: a CA bundle to verify the server with (instead of the
    system's).
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @classmethod
    def from_sources(cls, *, user=None, password_file=None, token_file=None, cert=None, key=None, ca=None,
                     env=None) -> "HttpAuth":
        """Options first, then ``SURGITWIN_DICOMWEB_{USER,PASSWORD,PASSWORD_FILE,TOKEN,TOKEN_FILE,CERT,KEY,CA}``.

        Passwords and tokens come from files or the environment only (a command line is
        visible to every user of the machine in the process list).
        """
        env = os.environ if env is None else env

        def pick(value, name):
            return value if value else (env.get(ENV_PREFIX + name) or None)

        password_file, token_file = pick(password_file, "PASSWORD_FILE"), pick(token_file, "TOKEN_FILE")
        auth = cls(user=pick(user, "USER"),
                   password=_read_secret(password_file, "password") if password_file else env.get(ENV_PREFIX + "PASSWORD"),
                   token=_read_secret(token_file, "token") if token_file else env.get(ENV_PREFIX + "TOKEN"),
                   cert=pick(cert, "CERT"), key=pick(key, "KEY"), ca=pick(ca, "CA"))
        if auth.password and not auth.user:
            raise PacsError("a DICOMweb password needs a user name (--dicomweb-user or SURGITWIN_DICOMWEB_USER)")
        if auth.token and auth.user:
            raise PacsError("choose HTTP basic (user and password) or a bearer token, not both")
        if auth.key and not auth.cert:
            raise PacsError("--dicomweb-key needs --dicomweb-cert (the client certificate it belongs to)")
        for what, f in (("client certificate", auth.cert), ("client key", auth.key), ("CA bundle", auth.ca)):
            if f and not Path(f).expanduser().is_file():
                raise PacsError(f"the DICOMweb {what} file does not exist", path=str(f))
        return auth

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password@, user, password): credentials never travel in messages."""
    from urllib.parse import unquote, urlunparse

    u = urlparse(url)
    if not (u.username or u.password):
        return url, None, None
    host = u.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{u.port}" if u.port else "")
    return urlunparse(u._replace(netloc=netloc)), unquote(u.username or "") or None, (
        unquote(u.password) if u.password is not None else None)


def make_client(url: str, timeout: float = 60.0, auth: HttpAuth | None = None):
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` (the DICOMweb root, e.g. http://host/dicom-web).

    Credentials in the URL (``https://user:pw@host/...``) are taken out of it and used as HTTP
    basic authentication unless ``auth`` names a user or token itself.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    clean, url_user, url_pw = split_url(url)
    u = urlparse(clean)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise PacsError(f"--dicomweb must be an http(s) URL of the DICOMweb root; found {clean!r}")
    auth = auth or HttpAuth()
    if url_user and not (auth.user or auth.token):
        auth = HttpAuth(url_user, url_pw, None, auth.cert, auth.key, auth.ca)
    session = requests.Session()
    if (u.hostname or "") in LOOPBACK:
        session.trust_env = False
    if auth.user:
        session.auth = (auth.user, auth.password or "")
    if auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    if auth.cert:
        session.cert = (auth.cert, auth.key) if auth.key else auth.cert
    if auth.ca:
        session.verify = auth.ca
    client = DICOMwebClient(url=clean.rstrip("/"), session=session, timeout=timeout)
    # dicomweb_client retries failed requests (exceptions too) with exponential back-off
    client.set_http_retry_params(retry=HTTP_MAX_ATTEMPTS > 1, max_attempts=HTTP_MAX_ATTEMPTS)
    client.surgitwin_secrets = auth.secrets() + [x for x in (url_pw,) if x]
    return client


def _scrub(text: str, client=None) -> str:
    for s in getattr(client, "surgitwin_secrets", None) or []:
        text = text.replace(s, "***")
    return re.sub(r"(https?://)[^/@\s]+@", r"\1", text)  # user:password@ in any URL


def _http(what: str, url: str, fn, *args, client=None, **kw):
    import requests

    url = split_url(url)[0]
    try:
        return fn(*args, **kw)
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        hint = " (authentication required or refused: --dicomweb-user/--dicomweb-password-file, a token, or a " \
               "client certificate)" if code in (401, 403) else ""
        raise PacsError(f"{what} failed: HTTP {code} from {url}{hint}") from None
    except requests.exceptions.SSLError as e:
        raise PacsError(_scrub(f"{what} failed: TLS error talking to {url} (server certificate not trusted? "
                               f"--dicomweb-ca): {e}", client)[:600]) from None
    except requests.RequestException as e:
        raise PacsError(_scrub(f"{what} failed: {type(e).__name__} talking to {url}: {e}", client)[:600]) from None


def _tag(obj: dict, tag: str):
    v = (obj.get(tag) or {}).get("Value") or []
    return v[0] if v else None


@dataclass
class PullReport:
    study_uid: str
    folder: str
    files: list[str] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)  # SeriesInstanceUID -> instances


def _write_instance(ds, folder: Path) -> Path:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop = _check_uid(ds.SOPInstanceUID, "SOPInstanceUID")
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    target = folder / f"{sop}.dcm"
    tmp = folder / f".tmp-{os.getpid()}-{sop}.dcm"
    with open(tmp, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def pull_study(url: str, study_uid: str, dest, *, timeout: float = 60.0, auth: HttpAuth | None = None) -> PullReport:
    """Download every series of ``study_uid`` into ``dest`` (QIDO-RS then WADO-RS per series)."""
    study_uid = _check_uid(study_uid, "--study")
    client = make_client(url, timeout, auth)
    url = split_url(url)[0]
    series = _http("QIDO-RS series search", url, client.search_for_series, study_instance_uid=study_uid,
                   get_remaining=True, client=client)
    uids = sorted({u for u in (_tag(s, "0020000E") for s in series) if u})
    if not uids:
        raise PacsError(f"study {study_uid} is not on the server (QIDO-RS found no series)", path=url)
    dest = Path(dest)
    report = PullReport(study_uid, str(dest))
    for su in uids:
        su = _check_uid(su, "SeriesInstanceUID")
        datasets = _http(f"WADO-RS retrieve of series {su}", url, client.retrieve_series, study_uid, su, client=client)
        folder = dest / su
        folder.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            phi.register_dataset(ds)
            report.files.append(str(_write_instance(ds, folder)))
        report.series[su] = len(datasets)
        log.info("pulled series %s: %d instances", su, len(datasets))
    return report


@dataclass
class PushReport:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    segments: list[str]
    source: str  # where the source headers came from: a folder or "WADO-RS"
    action: str = "stored"  # what the server did (DIMSE push: stored / already there / new version)


def stable_seg_uids(seg, scene):
    """Give the SEG UIDs derived from the scene's source series and the SEG's content.

    The same scene pushed twice is the same instance (a PACS keeps one copy; nothing is
    duplicated); a changed segmentation of the same source is a new instance of the same series.
    """
    import hashlib

    from ..deid import hashed_uid

    src = (scene.source or {}).get("series_instance_uid", "")
    series = hashed_uid("surgitwin-seg-series", str(src), str(scene.case_id))
    h = hashlib.sha256(bytes(seg.PixelData))
    for item in seg.SegmentSequence:
        h.update(str(item.SegmentLabel).encode() + b"\x00")
    sop = hashed_uid("surgitwin-seg-instance", series, h.hexdigest())
    seg.SeriesInstanceUID = series
    seg.SOPInstanceUID = sop
    seg.file_meta.MediaStorageSOPInstanceUID = sop
    return seg


def push_scene(scene_path, url: str, *, dicom_dir=None, timeout: float = 60.0, save_to=None,
               auth: HttpAuth | None = None) -> PushReport:
    """Build the scene's DICOM SEG over its source series and STOW-RS it into the source study.

    Parameters
    ----------
    scene_path : scene folder or scene.json
    dicom_dir : folder holding the source series (default: the scene's recorded input, then WADO-RS)
    save_to : also write the SEG file here (optional)
    """
    from ..export import ExportError
    from ..export.dicom_seg import build_segmentation, load_source_series
    from ..scene import load_scene

    scene = load_scene(scene_path, load_meshes=False)
    src = scene.source or {}
    study_uid = _check_uid(src.get("study_instance_uid", ""), "the scene's source study_instance_uid")
    series_uid = _check_uid(src.get("series_instance_uid", ""), "the scene's source series_instance_uid")
    client = make_client(url, timeout, auth)
    url = split_url(url)[0]
    try:
        datasets = load_source_series(scene, dicom_dir)
        where = str(dicom_dir or src.get("dicom_dir") or src.get("input"))
    except ExportError:
        if dicom_dir:
            raise
        log.info("source series %s not on this machine: retrieving its headers by WADO-RS", series_uid)
        datasets = _http(f"WADO-RS retrieve of source series {series_uid}", url, client.retrieve_series,
                         study_uid, series_uid, client=client)
        if not datasets:
            raise PacsError(f"the source series {series_uid} is neither on this machine nor on {url}") from None
        where = "WADO-RS"
    for ds in datasets:
        phi.register_dataset(ds)
    seg = stable_seg_uids(build_segmentation(scene, datasets), scene)  # pushing twice duplicates nothing
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(str(save_to), enforce_file_format=True)
    resp = _http("STOW-RS store of the SEG", url, client.store_instances, datasets=[seg], study_instance_uid=study_uid,
                 client=client)
    failed = getattr(resp, "FailedSOPSequence", None) if resp is not None else None
    if failed:
        reason = getattr(failed[0], "FailureReason", "?")
        raise PacsError(f"STOW-RS refused the SEG {seg.SOPInstanceUID} (failure reason {reason})", path=url)
    names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    log.info("pushed SEG %s (%d segments) into study %s", seg.SOPInstanceUID, len(names), study_uid)
    return PushReport(study_uid, str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID), names, where)
