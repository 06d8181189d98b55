"""DICOM C-STORE receiver (pynetdicom) feeding the batch machinery: ``surgitwin listen``.

* Binds to 127.0.0.1 unless told otherwise; accepts associations only from the configured
  calling AE titles (``pacs.allowed_calling_aets`` / ``--allow``) and only when called by its
  own AE title. An empty allow-list is refused at start-up rather than meaning "anyone".
* One host holds at most ``max_associations_per_peer`` associations (further connections are
  closed at once and logged); a connection that does not complete association negotiation
  within ``acse_timeout_s`` (5 s) and an association silent for ``idle_timeout_s`` are dropped,
  so idle connections cannot hold the listener's slots. A rejected association is logged as
  "rejected AE <title> from <host>:<port>".
* Accepts every storage SOP class pynetdicom knows, in every transfer syntax (the bytes are
  stored as received; nothing is decoded), plus Verification (C-ECHO).
* Each instance is spooled durably before the success status goes back
  (:mod:`pipeline.pacs.spool`); a disk failure answers 0xA700 (out of resources), a dataset
  without usable UIDs 0xC000 (cannot understand), so the sender keeps its copy.
* With ``tls_cert``/``tls_key`` it accepts DICOM over TLS only (TLS 1.2 or newer, as DICOM
  PS3.15's BCP 195 profiles ask); with ``tls_ca`` as well, a sender must also present a
  certificate signed by that CA (mutual TLS). Unreadable certificate files stop the start-up
  with the file named.
* A series with no new instance for ``series_idle_s`` is complete and runs through
  :func:`pipeline.batch.runner.run_batch` (same executors, same manifest ``DIR/manifest.sqlite``,
  scenes in ``DIR/cases/``). A restarted listener finishes what the previous one left:
  spooled series, and series queued but not done.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..batch import phi
from ..errors import SurgitwinError
from .spool import Spool

log = logging.getLogger(__name__)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class ListenerOptions:
    ae_title: str = "SURGITWIN"
    port: int = 11112
    bind: str = "127.0.0.1"
    allowed_calling_aets: list[str] = field(default_factory=list)
    series_idle_s: float = 10.0
    max_associations: int = 16
    max_associations_per_peer: int = 8  # idle connections from one host cannot hold every slot
    acse_timeout_s: float = 5.0  # a connection must complete association negotiation within this
    idle_timeout_s: float = 30.0  # an association silent for this long is dropped
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None


def server_tls_context(opts: ListenerOptions):
    """ssl.SSLContext for the listener, or None without a certificate (see module doc)."""
    import ssl

    if not (opts.tls_cert or opts.tls_key or opts.tls_ca):
        return None
    if not (opts.tls_cert and opts.tls_key):
        raise SurgitwinError("DICOM TLS needs both a certificate and its key (pacs.tls_cert / pacs.tls_key, "
                             "--tls-cert / --tls-key)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise SurgitwinError(f"cannot load the TLS certificate/key ({e})", path=opts.tls_cert) from None
    if opts.tls_ca:
        try:
            ctx.load_verify_locations(cafile=opts.tls_ca)
        except (OSError, ssl.SSLError) as e:
            raise SurgitwinError(f"cannot load the TLS CA bundle ({e})", path=opts.tls_ca) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class StoreSCP:
    """The network side only: receive, spool, acknowledge. :meth:`start` returns the bound port."""

    def __init__(self, spool: Spool, opts: ListenerOptions):
        if not opts.allowed_calling_aets:
            raise SurgitwinError("no calling AE title is allowed: set pacs.allowed_calling_aets in the config or pass "
                                 "--allow AET (an empty list would accept any sender)")
        self.spool, self.opts = spool, opts
        self.server = None
        self.refused = 0

    def _ae(self):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.opts.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.opts.allowed_calling_aets)
        ae.maximum_associations = self.opts.max_associations
        # A TCP connection that never sends its A-ASSOCIATE-RQ is dropped after the (short)
        # ACSE timeout (the ARTIM timer); an open association that goes silent after the idle one.
        ae.network_timeout = self.opts.idle_timeout_s
        ae.acse_timeout = self.opts.acse_timeout_s
        ae.dimse_timeout = 60
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._evt = evt
        return ae

    def handle_store(self, event) -> int:
        try:
            ds = event.dataset  # parsed lazily: reading three UIDs does not decode the pixels
            study, series = ds.get("StudyInstanceUID", ""), ds.get("SeriesInstanceUID", "")
            sop = event.request.AffectedSOPInstanceUID or ds.get("SOPInstanceUID", "")
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001 - a malformed dataset must not kill the association
            log.warning("C-STORE refused: dataset cannot be parsed (%s)", type(e).__name__)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.spool.store(str(study), str(series), str(sop), data, first_header=ds)
        except ValueError as e:
            log.warning("C-STORE refused: %s", phi.redact(str(e)))
            return STATUS_CANNOT_UNDERSTAND
        except OSError as e:
            log.error("C-STORE failed to spool an instance: %s", e)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _rejected(self, event) -> None:
        self.refused += 1
        who = event.assoc.requestor
        log.warning("rejected AE %s from %s:%s (calling AE title not allowed, or called AE title is not %s)",
                    (who.ae_title or "?").strip() if isinstance(who.ae_title, str) else who.ae_title,
                    who.address, who.port, self.opts.ae_title)

    def _verify(self, request, client_address) -> bool:
        """Per-peer limit, checked when a TCP connection is accepted (before any DICOM traffic)."""
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        server = self.server
        n = 0 if server is None else sum(1 for a in server.active_associations if a.requestor.address == host)
        if n >= self.opts.max_associations_per_peer:
            self.refused += 1
            log.warning("refused a connection from %s:%s: %d associations from this host are open already "
                        "(limit %d per host)", host, client_address[1] if isinstance(client_address, tuple) else "?",
                        n, self.opts.max_associations_per_peer)
            return False
        return True

    def start(self) -> int:
        ae = self._ae()
        handlers = [(self._evt.EVT_C_STORE, self.handle_store), (self._evt.EVT_REJECTED, self._rejected)]
        tls = server_tls_context(self.opts)
        try:
            self.server = ae.start_server((self.opts.bind, int(self.opts.port)), block=False, evt_handlers=handlers,
                                          ssl_context=tls)
        except OSError as e:
            raise SurgitwinError(f"cannot listen on {self.opts.bind}:{self.opts.port}: {e.strerror or e}") from None
        self.server.verify_request = self._verify  # socketserver asks it for every accepted connection
        port = self.server.server_address[1]
        log.info("listening as %s on %s:%d%s (allowed callers: %s; series complete after %.1f s idle)",
                 self.opts.ae_title, self.opts.bind, port,
                 "" if tls is None else (" over TLS, client certificates required" if self.opts.tls_ca else " over TLS"),
                 ", ".join(self.opts.allowed_calling_aets), self.opts.series_idle_s)
        return port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def listen(out_dir, opts: ListenerOptions, batch_options=None, *, reporter=None, ready: threading.Event | None = None,
           stop: threading.Event | None = None, on_port=None):
    """Receive and process until ``stop`` is set, SIGTERM or Ctrl-C; returns the batch summary.

    Parameters
    ----------
    out_dir : the listener's batch folder (spool/, manifest, cases/, logs/)
    opts : network options; ``batch_options`` : :class:`pipeline.batch.runner.BatchOptions`
        (``resume`` is forced on: a restarted listener continues the same manifest)
    ready : set once the port is bound (``on_port(port)`` is called first)
    stop : when given and set, the listener stops accepting and returns after the studies in
        flight finish (used by tests and embedding applications)
    """
    from ..batch.runner import BatchOptions, run_batch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spool = Spool(out / "spool", opts.series_idle_s, origin=f"listen {opts.ae_title}@{opts.bind}")
    scp = StoreSCP(spool, opts)
    bopts = batch_options or BatchOptions()
    bopts.resume = True
    port = scp.start()
    if on_port:
        on_port(port)
    if ready is not None:
        ready.set()
    watcher = None
    if stop is not None:
        def _watch():
            stop.wait()
            spool.close()
        watcher = threading.Thread(target=_watch, name="listen-stop", daemon=True)
        watcher.start()
    try:
        return run_batch([], out, bopts, reporter=reporter, live=spool)
    finally:
        scp.stop()
        spool.close()
