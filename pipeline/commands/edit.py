"""``surgitwin edit``: correct one structure of a scene (the same core the viewer's brush calls).

    surgitwin edit SCENE --structure liver --erase-sphere X Y Z R
    surgitwin edit SCENE --structure liver --paint-sphere X Y Z R
    surgitwin edit SCENE --structure liver --keep-largest
    surgitwin edit SCENE --structure liver --remove-island X Y Z
    surgitwin edit SCENE --structure liver --grow MM | --shrink MM
    surgitwin edit SCENE --undo

Points and radii are patient LPS millimetres. Heavy imports happen inside the handler.
"""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("edit", help="correct a structure (brush sphere, islands, grow/shrink, undo); LPS mm")
    p.add_argument("scene", help="scene folder or its scene.json")
    p.add_argument("--structure", metavar="NAME", help="the structure to edit (all operations but --undo)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--erase-sphere", nargs=4, type=float, metavar=("X", "Y", "Z", "R"),
                   help="erase the structure's voxels within R mm of (X, Y, Z)")
    g.add_argument("--paint-sphere", nargs=4, type=float, metavar=("X", "Y", "Z", "R"),
                   help="paint background/body voxels within R mm of (X, Y, Z) (other organs are spared)")
    g.add_argument("--keep-largest", action="store_true", help="keep the largest connected piece only")
    g.add_argument("--remove-island", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="erase the connected piece containing (X, Y, Z)")
    g.add_argument("--grow", type=float, metavar="MM", help="grow the structure by MM into background/body")
    g.add_argument("--shrink", type=float, metavar="MM", help="shrink the structure by MM")
    g.add_argument("--undo", action="store_true", help="undo the last edit (edits/history.json)")
    p.add_argument("--overwrite", action="store_true", help="--paint-sphere paints over other structures too")
    p.add_argument("--user", help="who makes the edit (recorded in the provenance; default: login name)")
    p.add_argument("--config", help="pipeline configuration YAML (mesh budgets; default configs/pipeline.yaml)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_edit)


def _request(args) -> tuple[str, dict]:
    if args.erase_sphere or args.paint_sphere:
        v = args.erase_sphere or args.paint_sphere
        kw = {"center": v[:3], "radius_mm": v[3]}
        if args.paint_sphere and args.overwrite:
            kw["overwrite"] = True
        return ("erase_sphere" if args.erase_sphere else "paint_sphere"), kw
    if args.keep_largest:
        return "keep_largest", {}
    if args.remove_island:
        return "remove_island", {"point": args.remove_island}
    if args.grow is not None:
        return "grow", {"mm": args.grow}
    return "shrink", {"mm": args.shrink}


def cmd_edit(args) -> int:
    from pipeline.scene.edit import EditError, edit_structure, undo_last

    if args.undo:
        res = undo_last(args.scene, user=args.user, config=args.config)
    else:
        if not args.structure:
            raise EditError("--structure NAME is required for every edit but --undo", path=args.scene,
                            rule="name the structure to edit")
        op, kw = _request(args)
        res = edit_structure(args.scene, args.structure, op, user=args.user, config=args.config, **kw)
    if args.json:
        print(json.dumps(res.to_dict(), default=str))
        return 0
    print(f"{res.id}: {res.op} on {res.structure}: +{res.voxels_added} / -{res.voxels_removed} voxels, "
          f"{res.volume_ml_before:.2f} -> {res.volume_ml_after:.2f} ml ({res.seconds:.2f} s)")
    if res.mesh:
        print(f"  mesh: {res.mesh.get('n_faces')} faces, closed: {res.mesh.get('watertight')}")
    if res.qc.get("warning"):
        print(f"  QC: {res.qc['warning']}")
    for n in res.plan:
        print(f"  plan {n}")
    return 0
