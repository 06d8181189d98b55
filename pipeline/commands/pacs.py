"""PACS commands: ``listen`` (C-STORE receiver), ``pull`` (QIDO/WADO-RS), ``push`` (SEG by STOW-RS)."""
from __future__ import annotations

import json
import sys


def _batch_args(p) -> None:
    p.add_argument("--workers", type=int, help="processes running studies (default from config)")
    p.add_argument("--scheduler", help="'local' or tcp://HOST:PORT of a Dask scheduler")
    p.add_argument("--model", help="segmentation model (default from configs/pipeline.yaml)")
    p.add_argument("--config", help="pipeline YAML (default configs/pipeline.yaml)")
    p.add_argument("--deidentify", action="store_true", help="process de-identified copies (PS3.15 Basic profile)")
    p.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="plain")


def register(sub) -> None:
    p = sub.add_parser("listen", help="DICOM C-STORE receiver: spool instances durably, process each complete series",
                       description="Receive instances (C-STORE), spool them to DIR/spool with fsync, and when a series "
                                   "has been idle for --idle seconds run it through the batch machinery (manifest in "
                                   "DIR). Stop with Ctrl-C or SIGTERM; a restart continues where it stopped.")
    p.add_argument("--out", required=True, help="listener folder: spool/, manifest.sqlite, cases/, logs/")
    p.add_argument("--ae-title", help="our AE title (default pacs.ae_title)")
    p.add_argument("--port", type=int, help="TCP port (default pacs.port)")
    p.add_argument("--bind", help="address to listen on (default pacs.bind = 127.0.0.1)")
    p.add_argument("--allow", action="append", default=[], metavar="AET",
                   help="calling AE title allowed to send (repeatable; adds to pacs.allowed_calling_aets)")
    p.add_argument("--idle", type=float, metavar="S", help="seconds without a new instance before a series is complete")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate: accept DICOM over TLS only (default pacs.tls_cert)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (default pacs.tls_key)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA bundle: senders must present a certificate it signed (default pacs.tls_ca)")
    _batch_args(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("pull", help="download a study by DICOMweb (QIDO-RS/WADO-RS) and run it")
    p.add_argument("--dicomweb", help="DICOMweb root URL (default pacs.dicomweb_url)")
    _auth_args(p)
    _dimse_args(p)
    p.add_argument("--study", required=True, metavar="UID", help="StudyInstanceUID")
    p.add_argument("--out", required=True, help="batch folder: pulled/<StudyUID>/, manifest, cases/")
    p.add_argument("--no-run", action="store_true", help="only download")
    _batch_args(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="store a scene's DICOM SEG into its source study by STOW-RS")
    p.add_argument("scene", help="scene folder or scene.json")
    p.add_argument("--dicomweb", help="DICOMweb root URL (default pacs.dicomweb_url)")
    _auth_args(p)
    _dimse_args(p)
    p.add_argument("--source-dicom", metavar="DIR", help="folder with the source series (default: the scene's input, "
                                                          "then the server itself by WADO-RS)")
    p.add_argument("--save", metavar="FILE", help="also keep the SEG file here")
    p.add_argument("--config", help="pipeline YAML (default configs/pipeline.yaml)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_push)


def _console_logging() -> None:
    import logging

    from pipeline.batch import phi

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    phi.install_filter()
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _batch_options(args, bcfg, workers_default: int):
    from pipeline.batch.runner import BatchOptions

    return BatchOptions(model=args.model or bcfg.model, config=args.config, snapshot=bcfg.snapshot,
                        workers=workers_default if args.workers is None else args.workers,
                        scheduler=args.scheduler or bcfg.scheduler, deidentify=args.deidentify,
                        timeout_s=bcfg.study_timeout_s, argv=["surgitwin", *sys.argv[1:]])


def _dimse_args(p) -> None:
    g = p.add_argument_group("DIMSE instead of DICOMweb (C-FIND/C-GET to pull, C-STORE to push)")
    g.add_argument("--dimse", metavar="HOST:PORT", help="the PACS's DICOM port")
    g.add_argument("--called-aet", metavar="AET", help="the PACS's AE title (required with --dimse)")
    g.add_argument("--calling-aet", metavar="AET", help="our AE title (default pacs.ae_title); the PACS must know it")


def _peer(args, pcfg):
    from pipeline.errors import ConfigError
    from pipeline.pacs.dimse import Peer

    if args.dicomweb:
        raise ConfigError("use --dimse or --dicomweb, not both")
    if not args.called_aet:
        raise ConfigError("--dimse needs --called-aet (the PACS's AE title)")
    return Peer.parse(args.dimse, args.called_aet, args.calling_aet or pcfg.ae_title)


def _auth_args(p) -> None:
    g = p.add_argument_group("DICOMweb authentication (also SURGITWIN_DICOMWEB_USER, _PASSWORD, _PASSWORD_FILE, "
                             "_TOKEN, _TOKEN_FILE, _CERT, _KEY, _CA)")
    g.add_argument("--dicomweb-user", metavar="NAME", help="HTTP basic user")
    g.add_argument("--dicomweb-password-file", metavar="FILE", help="file holding the HTTP basic password")
    g.add_argument("--dicomweb-token-file", metavar="FILE", help="file holding a bearer token")
    g.add_argument("--dicomweb-cert", metavar="PEM", help="client certificate (PEM; may hold the key too)")
    g.add_argument("--dicomweb-key", metavar="PEM", help="private key of --dicomweb-cert")
    g.add_argument("--dicomweb-ca", metavar="PEM", help="CA bundle to verify the server with")


def _auth(args, pcfg):
    from pipeline.pacs.dicomweb import HttpAuth

    return HttpAuth.from_sources(user=args.dicomweb_user or pcfg.dicomweb_user,
                                 password_file=args.dicomweb_password_file or pcfg.dicomweb_password_file,
                                 token_file=args.dicomweb_token_file or pcfg.dicomweb_token_file,
                                 cert=args.dicomweb_cert or pcfg.dicomweb_cert, key=args.dicomweb_key or pcfg.dicomweb_key,
                                 ca=args.dicomweb_ca or pcfg.dicomweb_ca)


def _url(args, pcfg) -> str:
    from pipeline.errors import ConfigError

    url = args.dicomweb or pcfg.dicomweb_url
    if not url:
        raise ConfigError("--dicomweb URL is required (or set pacs.dicomweb_url in the config)")
    return url


def cmd_listen(args) -> int:
    from pipeline.configuration import batch_and_pacs
    from pipeline.batch.progress import make_reporter
    from pipeline.pacs.listener import ListenerOptions, listen

    bcfg, pcfg = batch_and_pacs(args.config)
    _console_logging()
    opts = ListenerOptions(
        ae_title=args.ae_title or pcfg.ae_title, port=pcfg.port if args.port is None else args.port,
        bind=args.bind or pcfg.bind, allowed_calling_aets=sorted(set(pcfg.allowed_calling_aets) | set(args.allow)),
        series_idle_s=args.idle or pcfg.series_idle_s, max_associations=pcfg.max_associations,
        max_associations_per_peer=pcfg.max_associations_per_peer, acse_timeout_s=pcfg.acse_timeout_s,
        idle_timeout_s=pcfg.idle_timeout_s,
        tls_cert=args.tls_cert or pcfg.tls_cert, tls_key=args.tls_key or pcfg.tls_key, tls_ca=args.tls_ca or pcfg.tls_ca)
    summary = listen(args.out, opts, _batch_options(args, bcfg, pcfg.workers), reporter=make_reporter(args.progress))
    print(summary.text())
    return 0


def cmd_pull(args) -> int:
    from pathlib import Path

    from pipeline.configuration import batch_and_pacs
    from pipeline.batch.progress import make_reporter
    from pipeline.batch.runner import run_batch
    from pipeline.pacs.dicomweb import pull_study

    bcfg, pcfg = batch_and_pacs(args.config)
    dest = Path(args.out) / "pulled" / args.study
    if args.dimse:
        from pipeline.pacs.dimse import pull_study_dimse

        rep = pull_study_dimse(_peer(args, pcfg), args.study, dest)
    else:
        rep = pull_study(_url(args, pcfg), args.study, dest, timeout=pcfg.dicomweb_timeout_s, auth=_auth(args, pcfg))
    print(f"pulled study {args.study}: {len(rep.files)} instances in {len(rep.series)} series -> {dest}")
    if args.no_run:
        return 0
    opts = _batch_options(args, bcfg, bcfg.workers)
    opts.resume = True  # one batch folder accumulates pulls; a study already done is not run again
    summary = run_batch([str(dest)], args.out, opts, reporter=make_reporter(args.progress))
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_push(args) -> int:
    from pipeline.configuration import batch_and_pacs
    from pipeline.pacs.dicomweb import push_scene

    _, pcfg = batch_and_pacs(args.config)
    if args.dimse:
        from pipeline.pacs.dimse import push_scene_dimse

        rep = push_scene_dimse(args.scene, _peer(args, pcfg), dicom_dir=args.source_dicom, save_to=args.save)
    else:
        rep = push_scene(args.scene, _url(args, pcfg), dicom_dir=args.source_dicom, timeout=pcfg.dicomweb_timeout_s,
                         save_to=args.save, auth=_auth(args, pcfg))
    if args.json:
        print(json.dumps(rep.__dict__, indent=2))
    else:
        print(f"SEG {rep.sop_instance_uid} ({len(rep.segments)} segments: {', '.join(rep.segments)}) "
              f"in study {rep.study_uid}: {rep.action} (source headers from {rep.source})")
    return 0
