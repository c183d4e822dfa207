"""Train outside the server with the same train tasks as ``POST /train/{model}``.

    cd apps/liver_cascade
    python -m lib.trainers.cli --datastore ../../sample-data/generated/datastore \\
        --models liver_resnet,liver_cascade --max_epochs 40

``--train_ds``/``--val_ds`` take JSON datalists ([{"image": ..., "label": ...}])
instead of the datastore's final labels, e.g. to oversample some volumes.
Any other ``--key value`` is passed to the train request (lr, samples_per_volume...), checked as
the server checks it; ``--key`` alone is a switch (true). ``--model-dir`` and ``--model_dir`` are the
same option. The default ``--model_dir`` is the app's own model folder: the server's weights.
"""

import argparse
import json
import logging
import os
import sys
import time

if not __package__:
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from lib.conf import AppConf  # noqa: E402
from lib.model_io import ModelNotReadyError  # noqa: E402
from lib.settings import PRESETS  # noqa: E402
from lib.trainers import TRAINERS, make_trainer  # noqa: E402
from lib.trainers.liver import TRAIN_REQUEST_KEYS, check_recipe, known_train_keys, last_run_path  # noqa: E402


class _ListDatastore:
    """The part of a datastore the trainers use: ``datalist()``."""

    def __init__(self, datalist):
        self._datalist = datalist

    def datalist(self):
        return list(self._datalist)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _underscored(arg: str) -> str:
    """``--model-dir=a-b`` -> ``--model_dir=a-b``: the option's name only, never its value."""
    if not arg.startswith("--"):
        return arg
    key, eq, value = arg[2:].partition("=")
    return "--" + key.replace("-", "_") + eq + value


def _datalist(path: str, ap) -> list:
    """A JSON datalist, with every file it names on disk (a relative path is read from the current folder)."""
    try:
        with open(path) as f:
            items = json.load(f)
    except (OSError, ValueError) as e:
        ap.error(f"cannot read the datalist {path}: {e}")
    if not isinstance(items, list) or not all(isinstance(d, dict) and "image" in d and "label" in d for d in items):
        ap.error(f"{path} must be a JSON list of {{\"image\": ..., \"label\": ...}}")
    missing = [f for d in items for f in (d["image"], d["label"]) if not os.path.isfile(str(f))]
    if missing:
        ap.error(f"{path} names {len(missing)} file(s) that do not exist, e.g. {missing[:3]}")
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datastore", help="MONAI Label datastore folder (images + labels/final)")
    ap.add_argument("--train_ds", help="JSON datalist for training")
    ap.add_argument("--val_ds", help="JSON datalist for validation")
    ap.add_argument("--models", default="liver_resnet,liver_cascade",
                    help=f"comma-separated, in training order, of: {', '.join(TRAINERS)}")
    ap.add_argument("--model_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "model"))
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS))
    # --model-dir is --model_dir (the request's keys, like the recipe's, use underscores)
    argv = [_underscored(a) for a in (sys.argv[1:] if argv is None else argv)]
    args, rest = ap.parse_known_args(argv)
    request = {}
    i = 0
    while i < len(rest):
        key = rest[i]
        if not key.startswith("--") or len(key) < 3:
            ap.error(f"expected --key [value], got {key!r}")
        key, _, inline = key[2:].partition("=")
        if inline:
            request[key], i = _value(inline), i + 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            request[key], i = _value(rest[i + 1]), i + 2
        else:  # a switch given alone
            request[key], i = True, i + 1
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown_models = [m for m in names if m not in TRAINERS]
    if unknown_models or not names:
        ap.error(f"--models: unknown {unknown_models or args.models!r}; choose from {', '.join(TRAINERS)}")
    if not args.train_ds and not args.datastore:
        ap.error("give --datastore (a MONAI Label datastore folder) or --train_ds (a JSON datalist)")
    if args.datastore and not args.train_ds and not os.path.isdir(args.datastore):
        ap.error(f"--datastore {args.datastore} is not a folder")
    conf = {"preset": args.preset} if args.preset else {}
    model_dir = os.path.abspath(args.model_dir)
    app_conf = AppConf.from_conf(conf, model_dir)
    trainers = {name: make_trainer(name, model_dir, app_conf, conf) for name in names}
    # as the server checks a POST /train/: a typo ("max_epoch") would train with the default, 100 epochs
    known = set().union(*(known_train_keys(t) for t in trainers.values())) | {"pretrained_path"}
    unknown = sorted(k for k in request if k not in known)
    if unknown:
        ap.error(f"unknown training option(s) {['--' + k for k in unknown]}; the recipe's: "
                 f"{', '.join('--' + k for k in sorted(known - TRAIN_REQUEST_KEYS))}")
    try:
        check_recipe(request)
    except ValueError as e:
        ap.error(str(e))
    if request.get("pretrained_path") and not os.path.isfile(str(request["pretrained_path"])):
        ap.error(f"--pretrained_path {request['pretrained_path']} is not a file")
    if args.train_ds:
        store = _ListDatastore(_datalist(args.train_ds, ap))
        request["train_ds"] = args.train_ds
        if args.val_ds:
            _datalist(args.val_ds, ap)
            request["val_ds"] = args.val_ds
    else:
        from monailabel.datastore.local import LocalDatastore

        store = LocalDatastore(args.datastore, extensions=["*.nii.gz", "*.nii", "*.nrrd"])
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(f"training {names} into {model_dir}")
    for name, trainer in trainers.items():
        t0 = time.time()
        try:
            stats = trainer(dict(request), store)
        except (ValueError, ModelNotReadyError) as e:  # no labelled image, weights that do not fit, ...
            print(f"error: {name}: {e}", file=sys.stderr)
            return 1
        # a run that published nothing (publish: better) leaves its stats beside the model in place's; its best
        # epoch then scored under the model in place's (baseline_metric)
        run_stats = last_run_path(trainer._stats_path)
        kept = os.path.exists(run_stats) and os.path.getmtime(run_stats) >= t0
        if kept:
            with open(run_stats) as f:
                stats = json.load(f)
        print(json.dumps({"model": name, "seconds": round(time.time() - t0, 1), "best_metric": stats.get("best_metric"),
                          "baseline_metric": stats.get("baseline_metric"), "published": not kept}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
