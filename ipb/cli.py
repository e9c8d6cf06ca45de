"""The `ipb` command. `ipb --help` lists subcommands; each has its own `--help`.

    ipb run                      # the main job on embedded defaults (local Ray, synthetic data)
    ipb synth --out wells/ --wells 8
    ipb segment img.tif --out seg/
    ipb ingest wells/ --out table/ --labels wells/labels.csv
    ipb splits table/ --fold 0
    ipb config --profile paper train.epochs=10
    ipb methods [--settings]     # the registered methods, one line each (their own keys)
    ipb predict RUN_ID_OR_student.pt images/ --out pred/
    ipb predict "models:/ipb-main-colonies@champion" images/ --out pred/

Every command takes `--profile smoke|paper|study|FILE.yaml` and `key.sub=value` overrides.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipb.method_catalog import names as method_names


def _common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("--profile", default="smoke",
                   help="smoke (CPU minutes, default), paper (the paper's setting), study, "
                        "or a YAML file")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="config overrides, e.g. train.epochs=3 model.arch=vgg19")


def _config(args, extra: dict | None = None):
    from ipb.config import load_config, parse_overrides
    ov = parse_overrides(getattr(args, "overrides", []) or [])
    return load_config(args.profile, {**(extra or {}), **ov})


def cmd_methods(args) -> int:
    from ipb.config.settings import describe
    from ipb.method_catalog import markdown, text
    print(describe() if args.settings else markdown() if args.markdown else text())
    return 0


def cmd_config(args) -> int:
    from ipb.config import to_yaml
    print(to_yaml(_config(args)), end="")
    return 0


def cmd_synth(args) -> int:
    from ipb.data.synth import synthesize, write_class_folders
    extra = {k: v for k, v in {"synth.wells": args.wells, "synth.seed": args.seed,
                               "synth.size": args.size, "synth.bit_depth": args.bit_depth,
                               "synth.time_points": args.time_points,
                               "synth.difficulty": args.difficulty}.items() if v is not None}
    cfg = _config(args, extra)
    if args.layout == "folders":
        summary = write_class_folders(args.out, cfg.synth)
    else:
        summary = synthesize(args.out, cfg.synth)
    print(f"SYNTHETIC data written to {args.out}: "
          + ", ".join(f"{k}={v}" for k, v in summary.items() if k not in ("config",)))
    return 0


def cmd_segment(args) -> int:
    from ipb.data.segment import segment_files
    cfg = _config(args)
    n = segment_files(args.images, args.out, cfg.segmentation)
    print(f"segmented {len(args.images)} images, {n} colonies -> {args.out}")
    return 0


def cmd_ingest(args) -> int:
    from ipb.data.ingest import ingest
    from ipb.data.sources import plan_sources
    from ipb.runtime import init_ray
    cfg = _config(args)
    # labels and images are checked before Ray starts: a bad label file fails in a second
    plan = plan_sources(args.source, args.labels, args.layout, cfg.data.label_map)
    _reap_on_exit()
    init_ray(num_cpus=args.num_cpus)
    manifest = ingest(args.source, args.out, cfg, plan=plan)
    tag = " (SYNTHETIC)" if manifest["synthetic"] else ""
    boxes = manifest["labelled_boxes"]
    print(f"colony table{tag} {args.out}: {manifest['n_colonies']} colonies, "
          f"classes {manifest['classes']}, {manifest['multi_label']} multi-label, "
          f"{manifest['unlabeled']} unlabeled, {len(manifest['rejected'])} rejected"
          + (f"; labelled boxes {boxes['kept']} kept of {boxes['listed']} "
             f"({boxes['duplicates']} duplicates, {boxes['rejected']} rejected), masks "
             f"{boxes['mask_source']}" if boxes["listed"] else ""))
    return 0


def cmd_splits(args) -> int:
    from ipb.data.splits import make_split
    from ipb.data.table import META_COLUMNS, load_colonies, read_manifest
    cfg = _config(args)
    manifest = read_manifest(args.table)
    meta = load_colonies(args.table, columns=META_COLUMNS)
    folds = [args.fold] if args.fold is not None else list(range(cfg.split.folds))
    tag = "SYNTHETIC " if manifest.get("synthetic") else ""
    for f in folds:
        split = make_split(meta, cfg.split, fold=f, multi_label=cfg.method.multi_label,
                           partial=cfg.method.multi_label_loss == "partial")
        print(f"{tag}fold {f}: " + ", ".join(
            f"{part} {c.get('total', 0)} {({k: v for k, v in c.items() if k != 'total'})}"
            for part, c in split.summary()["counts"].items()))
        for w in split.warnings + ((split.selection_problem(),) if split.selection_problem()
                                   else ()):
            print(f"{tag}fold {f}: WARNING {w.removeprefix(f'fold {f}: ')}")
    return 0


def _reap_on_exit() -> None:
    """Commands that start an embedded Ray leave no process behind, even after kill -9; their
    logs stay plain (no colour codes, no Ray dedup tags) when redirected to a file."""
    from ipb.console import plain_logs_when_redirected
    from ipb.reaper import start
    plain_logs_when_redirected()
    start()


def _check_tracking(cfg) -> None:
    """An unreachable MLflow server fails here in seconds, not after Ray and minutes of retries."""
    from ipb.preflight import check_tracking_uri
    from ipb.tracking import tracking_uri
    check_tracking_uri(tracking_uri(cfg))


def cmd_train(args) -> int:
    extra = {k: v for k, v in {"data.table": args.table, "method.name": args.method,
                               "model.arch": args.arch, "train.fold": args.fold,
                               "train.seed": args.seed, "train.num_workers": args.workers,
                               "tracking.uri": args.tracking_uri}.items() if v is not None}
    cfg = _config(args, extra)          # a bad key or value fails here, before torch or Ray
    from ipb.console import ray_dashboard, ui_lines
    from ipb.inputs import resolve_table
    from ipb.runtime import init_ray
    from ipb.tracking import tracking_uri
    from ipb.train import fit
    _check_tracking(cfg)
    from ipb.methods import method_class
    method_class(cfg.method.name)       # a bad --method or --table fails before Ray starts
    table = cfg.data.table and resolve_table(cfg)
    _reap_on_exit()
    init_ray(quiet=False)
    if ray_dashboard():
        print(f"Ray dashboard: {ray_dashboard()}", file=sys.stderr, flush=True)
    out = fit(cfg, table or resolve_table(cfg))
    m = out["metrics"]
    print(f"{out['name']}: test TPR mean {m['test.tpr.mean']:.4f}, F1 mean {m['test.f1.mean']:.4f} "
          f"(selected on {cfg.train.select_on} at epoch {m['best.epoch']}); MLflow run "
          f"{out['run_id']}, models {out['models']['colonies']} (ipb predict) and "
          f"{out['models']['student']} (the network)\n"
          + ui_lines(tracking_uri(cfg), out["experiment_id"]), flush=True)
    return 0


def cmd_predict(args) -> int:
    import re

    from ipb.config import parse_overrides
    from ipb.predict import DEFAULT_TEST_PATCHES, config_for, load_student, predict_images
    from ipb.predict_files import prepare_out
    # IMAGES and key=value overrides share the positional tail: a dotted key=value that is not
    # an existing file is an override
    is_ov = [bool(re.match(r"^\w+(\.\w+)+=", a)) and not Path(a).exists() for a in args.images]
    images = [a for a, o in zip(args.images, is_ov) if not o]
    ov = parse_overrides([a for a, o in zip(args.images, is_ov) if o])
    if not images:
        raise FileNotFoundError("no IMAGES given (files or directories of images)")
    if not any(Path(a).exists() for a in images):   # before the model is downloaded
        raise FileNotFoundError(f"none of IMAGES exists: {', '.join(images)}")
    prepare_out(args.out, args.overwrite)
    model, meta = load_student(args.model, tracking_uri=args.tracking_uri)
    cfg = config_for(meta, args.profile, ov)
    k = args.test_patches if args.test_patches is not None else int(
        ov.get("patch.test_patches", DEFAULT_TEST_PATCHES))
    out = predict_images(model, meta, images, args.out, cfg, test_patches=k, overwrite=True)
    print(f"{out['n_images']} images, {out['n_colonies']} colonies ("
          + ", ".join(f"{c} {n}" for c, n in out["counts"].items())
          + f"), {out['n_skipped']} skipped, {out['seconds']:.1f}s -> {args.out}/colonies.csv, "
          "counts.csv" + (", counts_over_time.png" if "counts_over_time" in out["files"] else "")
          + ", labels/*.ome.tif (napari, Fiji), geojson/*.geojson (QuPath)"
          + (f"; {len(out['warnings'])} warning(s) in README.txt" if out["warnings"] else ""))
    if meta.get("synthetic"):
        print("NOTE: the model was trained on SYNTHETIC data.")
    return 0 if out["n_images"] else 1


def cmd_report(args) -> int:
    from ipb.report import make_report
    from ipb.tracking import tracking_uri
    cfg = _config(args, {"tracking.uri": args.tracking_uri} if args.tracking_uri else None)
    _check_tracking(cfg)
    out = make_report(args.experiment, Path(args.out), uri=tracking_uri(cfg),
                      parent_run_id=args.parent, reference=args.reference)
    print(out["markdown"])
    print(f"\nreport files in {out['dir']}")
    return 0


def cmd_run(args) -> int:
    from ipb.pipeline import main_job
    cfg = _config(args)
    _check_tracking(cfg)
    _reap_on_exit()
    return main_job(cfg)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ipb")
    except PackageNotFoundError:      # a checkout on PYTHONPATH, not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ipb", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ipb {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _data_commands(sub)
    _train_command(sub)
    _result_commands(sub)
    return ap


def _data_commands(sub) -> None:
    """run, methods, config, synth, segment, ingest."""
    p = sub.add_parser("run", help="the main job on embedded defaults (synthetic data)")
    _common(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("methods", help="the registered methods (method.name), one line each")
    p.add_argument("--markdown", action="store_true", help="as the README's table")
    p.add_argument("--settings", action="store_true",
                   help="the methods' own keys (method.<group>.*): defaults, ranges, old names")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    _common(p)
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("synth", help="write SYNTHETIC phase-contrast wells with labels and masks")
    p.add_argument("--out", required=True, help="output directory (new or an earlier synth)")
    p.add_argument("--wells", type=int, help="number of well images (synth.wells)")
    p.add_argument("--seed", type=int, help="random seed of the synthetic wells")
    p.add_argument("--size", type=int, help="image side in px")
    p.add_argument("--bit-depth", type=int, choices=(8, 16),
                   help="8- or 16-bit TIFFs (16 exercises the real microscopes' depth)")
    p.add_argument("--time-points", type=int, help=">1 writes time-lapse series")
    p.add_argument("--difficulty", type=float, help="0 clean .. 1 hard (default 0.5)")
    p.add_argument("--layout", choices=("wells", "folders"), default="wells",
                   help="wells (default) or paper-style colony crops in class folders")
    _common(p)
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("segment", help="segment colonies: one mask PNG per image + colonies.csv")
    p.add_argument("images", nargs="+", help="image files (TIFF 8/16-bit, PNG, JPEG)")
    p.add_argument("--out", required=True,
                   help="output directory: a mask PNG per image and colonies.csv")
    p.add_argument("--profile", default="smoke",
                   help="whose segmentation.* settings to use (smoke, paper, study, a YAML)")
    p.set_defaults(fn=cmd_segment, overrides=[])

    p = sub.add_parser("ingest", help="Ray Data ingest of images into a colony table")
    p.add_argument("source", help="directory of images (wells/fields or class folders)")
    p.add_argument("--out", required=True, help="colony table directory")
    p.add_argument("--labels", help="CSV (image,x0,y0,x1,y1,label or image,label), a directory "
                                    "of Pascal VOC XML files, or a COCO JSON file")
    p.add_argument("--layout", choices=("auto", "wells", "folders"), default="auto",
                   help="wells: whole wells/fields, segmented into colonies; folders: colony "
                        "crops, one sub-directory per class; auto (default): folders when "
                        "there are no --labels and every sub-directory holds images")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded local Ray")
    _common(p)
    p.set_defaults(fn=cmd_ingest)


def _train_command(sub) -> None:
    """train: one trial."""
    p = sub.add_parser("train", help="one trial (method, arch, fold) on Ray Train -> MLflow run")
    p.add_argument("--table", help="colony table (default: the cached SYNTHETIC table)")
    p.add_argument("--method", help=" | ".join(method_names()) + " (`ipb methods` says what "
                                    "each is)")
    p.add_argument("--arch", help="small_cnn | vgg19 | ms_vgg19 | hrnet_w18 | ms_hrnet_w18")
    p.add_argument("--fold", type=int, help="cross-validation fold (0 .. split.folds-1) whose "
                                            "test part is held out (train.fold)")
    p.add_argument("--seed", type=int, help="training seed (train.seed): initial weights, "
                                            "batches, augmentation")
    p.add_argument("--workers", type=int, help="Ray Train workers (data parallel)")
    p.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///mlflow.db)")
    _common(p)
    p.set_defaults(fn=cmd_train)


def _result_commands(sub) -> None:
    """predict, report, splits."""
    p = sub.add_parser("predict", help="segment and classify the colonies of new images with a "
                                      "trained student -> CSVs and counts over time")
    p.add_argument("model", metavar="MODEL",
                   help="student.pt, a directory holding it, an MLflow run id / runs:/<id>, "
                        "or a logged or registered model: models:/NAME@champion, "
                        "models:/NAME/VERSION, models:/<model id>")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files or directories, then optional key.sub=value overrides "
                        "(e.g. segmentation.pixel_size_um=1.0)")
    p.add_argument("--out", required=True, help="output directory (refused if it holds an "
                                                "earlier prediction, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier prediction in --out (its own files only)")
    p.add_argument("--test-patches", type=int,
                   help="patches averaged per colony (default 5; 1 = the paper's centre patch)")
    p.add_argument("--tracking-uri", help="MLflow URI for a run id or models:/ (default "
                                          "MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--profile", default=None,
                   help="use this profile instead of the config saved with the model")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("report", help="paper-style tables/figures from a sweep's MLflow runs")
    p.add_argument("--experiment", required=True, help="e.g. ipb-main, ipb-ablation")
    p.add_argument("--out", default="report", help="directory for report.md, CSVs, PNGs")
    p.add_argument("--parent", help="only the trials of this parent (sweep) run")
    p.add_argument("--reference", help="configuration the t-tests compare against")
    p.add_argument("--tracking-uri", help="MLflow URI (default MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow.db)")
    _common(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("splits", help="print the U/L/val/T split of each fold of a table")
    p.add_argument("table", help="a colony table (directory or URI)")
    p.add_argument("--fold", type=int, help="only this fold (default: every fold)")
    _common(p)
    p.set_defaults(fn=cmd_splits)


# the commands whose re-run continues where a stopped one left off
RESUMES = ("train", "ingest", "run")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:   # argparse leaves positionals that follow options over, e.g. `--out T k=v`
        if any(e.startswith("-") for e in extra):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        rest = [e for e in extra if "=" not in e]
        args.overrides = list(getattr(args, "overrides", None) or []) + [e for e in extra
                                                                         if "=" in e]
        if rest and getattr(args, "fn", None) is cmd_predict:
            args.images += rest
        elif rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
    from ipb import stop
    # every command, not only those that start Ray (init_ray installs it again after ray.init,
    # whose own handler would otherwise dump a stack): SIGTERM stops predict, segment, synth,
    # report and splits in one line with exit code 143, as Ctrl-C does with 130
    with stop.command():
        return _run(args)


def _run(args) -> int:
    """The command, its stop in one line, and the errors that already say what to do."""
    from ipb import stop
    from ipb.config import ConfigError

    def stopped() -> int:   # one line; a run it had open is KILLED; what resumes says so
        how = "SIGTERM" if stop.exit_code() == 143 else "Ctrl-C"
        again = "; the same command resumes" if args.command in RESUMES else ""
        print(f"ipb {args.command}: stopped ({how}){again}", file=sys.stderr, flush=True)
        return stop.exit_code()
    try:
        code = args.fn(args) or 0
        # a stop lost after the last check (inside an extension, at the end): never exit 0
        return stopped() if stop.swallowed() else code
    except KeyboardInterrupt:
        return stopped()
    except (ConfigError, FileNotFoundError) as e:
        print(f"ipb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:   # IngestError, TableError, split errors: already say what to do
        print(f"ipb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from ipb.data.ingest import TableExistsError
        if isinstance(e, TableExistsError):
            print(f"ipb {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
