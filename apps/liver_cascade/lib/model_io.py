"""Model files: one checkpoint format, atomic publishing, cached loading.

A checkpoint is a dict with the network's ``state_dict`` under ``"model"`` and
what is needed to rebuild it (``arch``, ``preset``, ``in_channels``) plus free
provenance (``meta``). Files are published atomically (write, then rename) so
a running server never reads a half-written model, and loaders reload a file
when its modification time changes (the next request uses a new model).
"""

import json
import os
import threading
from typing import Any, Dict, Optional, Tuple

import torch

from lib.datastore import atomic_copy, atomic_write
from lib.networks import build_network


class ModelNotReadyError(RuntimeError):
    """A model file the task needs is missing or unreadable."""


def save_checkpoint(path: str, network: torch.nn.Module, arch: str, preset: str, in_channels: int,
                    meta: Optional[Dict[str, Any]] = None) -> str:
    net = network.module if hasattr(network, "module") else network
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    # plain JSON values in meta (a numpy number would not load with weights_only)
    meta = json.loads(json.dumps(meta or {}, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    ckpt = {"model": state, "arch": arch, "preset": preset, "in_channels": in_channels, "meta": meta}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(os.path.abspath(path), lambda out: torch.save(ckpt, out))  # readable by all, as shipped files
    return path


PREVIOUS_SUFFIX = ".previous"


def keep_previous(path: str) -> Optional[str]:
    """Copy the model file in place to ``<path>.previous`` before it is replaced (by an upload, or by a
    training round's first publish), so a bad replacement can be rolled back. One copy: the model
    replaced last. Returns the copy's path, or None when there was no model in place."""
    if not os.path.exists(path):
        return None
    atomic_copy(path, os.path.abspath(path) + PREVIOUS_SUFFIX)
    return path + PREVIOUS_SUFFIX


def load_failure(e: BaseException) -> str:
    """Why a checkpoint did not load, in one line; not torch's advice to load a refused pickle unsafely."""
    if "weights only load failed" in str(e).lower():
        return "it holds more than tensors and plain values (a file that would run code when unpickled is refused)"
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def load_checkpoint(path, device="cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The network and checkpoint dict of ``path`` (a file name, or a binary file object)."""
    try:
        # weights_only: a checkpoint is tensors, names and numbers; a pickle that runs code (an uploaded
        # "model") is refused, not executed
        ckpt = torch.load(path, map_location=device, weights_only=True)
        net = build_network(ckpt["arch"], ckpt["preset"], ckpt["in_channels"])
        net.load_state_dict(ckpt["model"])
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt file, wrong format
        raise ModelNotReadyError(f"Model file {path} could not be loaded: {load_failure(e)}") from e
    return net.to(device).eval(), ckpt


class ModelCache:
    """Per (path, device) cache that reloads when the file's mtime changes."""

    def __init__(self):
        self._cache: Dict[Tuple[str, str], Tuple[float, torch.nn.Module, Dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, path: str, device, how_to_train: str = "") -> Tuple[torch.nn.Module, Dict[str, Any]]:
        if not os.path.exists(path):
            raise ModelNotReadyError(
                f"Model file {path} is missing, so there is no model to run (random weights are never used). "
                + how_to_train
            )
        mtime = os.stat(path).st_mtime
        key = (path, str(device))
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] == mtime:
                return hit[1], hit[2]
            net, ckpt = load_checkpoint(path, device)
            net = net.to(memory_format=torch.channels_last)
            info = {"path": path, "mtime": mtime, "preset": ckpt["preset"], "arch": ckpt["arch"],
                    "meta": ckpt.get("meta", {})}
            self._cache[key] = (mtime, net, info)
            return net, info
