"""Train outside the server with the same train tasks as ``POST /train/{model}``.

    cd apps/liver_cascade
    python -m lib.trainers.cli --datastore ../../sample-data/generated/datastore \\
        --models liver_resnet,liver_cascade --max_epochs 40

``--train_ds``/``--val_ds`` take JSON datalists ([{"image": ..., "label": ...}])
instead of the datastore's final labels, e.g. to oversample some volumes.
Any other ``--key value`` is passed to the train request (lr, samples_per_volume...).
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datastore", help="MONAI Label datastore folder (images + labels/final)")
    ap.add_argument("--train_ds", help="JSON datalist for training")
    ap.add_argument("--val_ds", help="JSON datalist for validation")
    ap.add_argument("--models", default="liver_resnet,liver_cascade")
    ap.add_argument("--model_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "model"))
    ap.add_argument("--preset", default=None)
    args, rest = ap.parse_known_args(argv)
    request = {}
    for k, v in zip(rest[::2], rest[1::2]):
        request[k.lstrip("-")] = _value(v)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
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
