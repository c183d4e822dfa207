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
from lib.trainers import make_trainer  # noqa: E402
from lib.trainers.liver import check_recipe  # noqa: E402


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datastore", help="MONAI Label datastore folder (images + labels/final)")
    ap.add_argument("--train_ds", help="JSON datalist for training")
    ap.add_argument("--val_ds", help="JSON datalist for validation")
    ap.add_argument("--models", default="liver_resnet,liver_cascade")
    ap.add_argument("--model_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "model"))
    ap.add_argument("--preset", default=None)
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
    try:
        check_recipe(request)
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(f"training {args.models} into {os.path.abspath(args.model_dir)}")
    conf = {"preset": args.preset} if args.preset else {}
    app_conf = AppConf.from_conf(conf, args.model_dir)
    if args.train_ds:
        with open(args.train_ds) as f:
            datalist = json.load(f)
        store = _ListDatastore(datalist)
        request["train_ds"] = args.train_ds
        if args.val_ds:
            request["val_ds"] = args.val_ds
    else:
        from monailabel.datastore.local import LocalDatastore

        store = LocalDatastore(args.datastore, extensions=["*.nii.gz", "*.nii", "*.nrrd"])
    model_dir = os.path.abspath(args.model_dir)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.time()
        stats = make_trainer(name, model_dir, app_conf, conf)(dict(request), store)
        print(json.dumps({"model": name, "seconds": round(time.time() - t0, 1),
                          "best_metric": stats.get("best_metric")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
