"""DIMSE the way most PACS speak: query (C-FIND), retrieve (C-GET) and store (C-STORE).

``pull_study_dimse(peer, study_uid, dest)`` lists the study's series with C-FIND (study root,
SERIES level) and retrieves each with C-GET over the same kind of association (no second port
to open: the PACS sends the instances back on it, the role negotiation of PS3.4 C.4.3), writing
``dest/<SeriesUID>/<SOPInstanceUID>.dcm`` (temp name + fsync + rename).

``push_scene_dimse(scene, peer)`` builds the scene's SEG like the DICOMweb push and sends it by
C-STORE. Pushing is idempotent: the SEG's series and instance UIDs are derived from the scene's
source series and the SEG's content (:func:`pipeline.pacs.dicomweb.stable_seg_uids`), so a
second push of the same scene stores the same instance again (a PACS keeps one copy), and the
report says what happened (``action``: ``stored`` / ``already on the server`` / ``new version``
when the server held an earlier SEG of the same series).

Every association has ACSE, DIMSE and network timeouts: a peer that does not answer fails the
command with its address named, never a hang.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..batch import phi
from .dicomweb import PacsError, PullReport, PushReport, _check_uid, _write_instance, stable_seg_uids

log = logging.getLogger(__name__)
STORAGE_CONTEXTS_MAX = 120  # + the query/retrieve context: within the 128 presentation contexts


@dataclass
class Peer:
    """A DICOM node: ``host:port`` and its AE title; ``calling`` is ours."""

    host: str
    port: int
    called: str
    calling: str = "SURGITWIN"
    timeout: float = 30.0

    @classmethod
    def parse(cls, spec: str, called: str, calling: str = "SURGITWIN", timeout: float = 30.0) -> "Peer":
        host, sep, port = str(spec).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PacsError(f"--dimse must be HOST:PORT of the PACS's DICOM port; found {spec!r}")
        for what, aet in (("called", called), ("calling", calling)):
            if not aet or len(aet) > 16 or "\\" in aet:
                raise PacsError(f"the {what} AE title must be 1-16 characters without backslash; found {aet!r}")
        return cls(host.strip("[]"), int(port), called, calling, timeout)

    def __str__(self) -> str:
        return f"{self.called}@{self.host}:{self.port}"


def _ae(peer: Peer):
    from pynetdicom import AE

    ae = AE(ae_title=peer.calling)
    ae.acse_timeout = peer.timeout
    ae.dimse_timeout = peer.timeout
    ae.network_timeout = peer.timeout
    ae.connection_timeout = peer.timeout
    return ae


def _associate(ae, peer: Peer, **kw):
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called, **kw)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise PacsError(f"association with {peer} {why} (is {peer.calling} a known modality there, with "
                        f"query/retrieve or store allowed?)")
    return assoc


def find_series(peer: Peer, study_uid: str) -> list[dict]:
    """C-FIND (study root, SERIES level): [{series_uid, modality, n_instances}] of ``study_uid``."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    ae = _ae(peer)
    ae.add_requested_context(Find)
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    q.NumberOfSeriesRelatedInstances = ""
    out = []
    assoc = _associate(ae, peer)
    try:
        for status, ident in assoc.send_c_find(q, Find):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"C-FIND to {peer}: no answer within {peer.timeout:g} s")
            if code in (0xFF00, 0xFF01) and ident is not None:
                out.append({"series_uid": str(ident.get("SeriesInstanceUID", "")),
                            "modality": str(ident.get("Modality", "")),
                            "n_instances": ident.get("NumberOfSeriesRelatedInstances")})
            elif code != 0x0000:
                raise PacsError(f"C-FIND to {peer} failed with status 0x{code:04X}")
    finally:
        assoc.release()
    return [s for s in out if s["series_uid"]]


def _get_contexts(ae):
    from pynetdicom import StoragePresentationContexts, build_role
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

    ae.add_requested_context(Get)
    roles = []
    for cx in StoragePresentationContexts[:STORAGE_CONTEXTS_MAX]:
        ae.add_requested_context(cx.abstract_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    return Get, roles


@dataclass
class _Receiver:
    folder: Path
    files: list[str] = field(default_factory=list)
    failed: int = 0

    def handle(self, event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            phi.register_dataset(ds)
            self.files.append(str(_write_instance(ds, self.folder)))
            return 0x0000
        except OSError as e:
            log.error("C-GET: cannot write an instance: %s", e)
            self.failed += 1
            return 0xA700
        except Exception as e:  # noqa: BLE001 - a malformed instance fails alone
            log.warning("C-GET: instance refused (%s)", type(e).__name__)
            self.failed += 1
            return 0xC000


def get_series(peer: Peer, study_uid: str, series_uid: str, folder: Path) -> list[str]:
    """C-GET one series into ``folder``; returns the files written."""
    from pydicom.dataset import Dataset
    from pynetdicom import evt

    ae = _ae(peer)
    get, roles = _get_contexts(ae)
    folder.mkdir(parents=True, exist_ok=True)
    rx = _Receiver(folder)
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = series_uid
    assoc = _associate(ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, rx.handle)])
    final = None
    try:
        for status, _ in assoc.send_c_get(q, get):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"C-GET from {peer}: no answer within {peer.timeout:g} s (series {series_uid})")
            if code not in (0xFF00,):
                final = code
    finally:
        assoc.release()
    if final not in (0x0000, None) or rx.failed:
        raise PacsError(f"C-GET of series {series_uid} from {peer} ended with status 0x{(final or 0):04X}; "
                        f"{len(rx.files)} instances received, {rx.failed} refused here")
    return rx.files


def pull_study_dimse(peer: Peer, study_uid: str, dest) -> PullReport:
    """Download every series of ``study_uid`` (C-FIND, then C-GET per series) into ``dest``."""
    study_uid = _check_uid(study_uid, "--study")
    series = find_series(peer, study_uid)
    if not series:
        raise PacsError(f"study {study_uid} is not on {peer} (C-FIND found no series)")
    dest = Path(dest)
    report = PullReport(study_uid, str(dest))
    for s in series:
        su = _check_uid(s["series_uid"], "SeriesInstanceUID")
        files = get_series(peer, study_uid, su, dest / su)
        report.files += files
        report.series[su] = len(files)
        log.info("pulled series %s by C-GET: %d instances", su, len(files))
    return report


def _store(peer: Peer, ds) -> int:
    ae = _ae(peer)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = _associate(ae, peer)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise PacsError(f"C-STORE to {peer}: no answer within {peer.timeout:g} s")
    return int(code)


def push_scene_dimse(scene_path, peer: Peer, *, dicom_dir=None, save_to=None) -> PushReport:
    """Build the scene's SEG over its local source series and C-STORE it (idempotent; see module doc)."""
    from ..export.dicom_seg import build_segmentation, load_source_series
    from ..scene import load_scene

    scene = load_scene(scene_path, load_meshes=False)
    src = scene.source or {}
    study_uid = _check_uid(src.get("study_instance_uid", ""), "the scene's source study_instance_uid")
    datasets = load_source_series(scene, dicom_dir)
    for ds in datasets:
        phi.register_dataset(ds)
    seg = stable_seg_uids(build_segmentation(scene, datasets), scene)
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(str(save_to), enforce_file_format=True)
    before = {s["series_uid"]: s for s in find_series(peer, study_uid)}
    had = before.get(str(seg.SeriesInstanceUID))
    code = _store(peer, seg)
    if code not in (0x0000, 0xB000, 0xB006, 0xB007):
        raise PacsError(f"C-STORE of the SEG {seg.SOPInstanceUID} to {peer} failed with status 0x{code:04X}")
    after = {s["series_uid"]: s for s in find_series(peer, study_uid)}.get(str(seg.SeriesInstanceUID)) or {}
    n_before = int(had["n_instances"]) if had and had.get("n_instances") not in (None, "") else 0
    n_after = int(after.get("n_instances") or 0) if after.get("n_instances") not in (None, "") else 0
    if not had:
        action = "stored"
    elif n_after <= n_before:
        action = "already on the server (same SEG instance): nothing duplicated"
    else:
        action = (f"new version: the server already held {n_before} earlier SEG instance(s) of this series; "
                  f"this one was added beside them (DIMSE cannot delete them)")
    names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    log.info("pushed SEG %s to %s: %s", seg.SOPInstanceUID, peer, action)
    return PushReport(study_uid, str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID), names,
                      str(dicom_dir or src.get("dicom_dir") or src.get("input")), action)
