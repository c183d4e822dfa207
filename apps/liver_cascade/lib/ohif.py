"""The OHIF viewer that ships with monailabel, served so that annotators can work in it.

Two problems of monailabel 0.8.5, fixed by a route put in front of monailabel's own
`/ohif/{path}` when the app runs inside `monailabel start_server` (installed files untouched):
- the route joins a nested path with `os.pathsep` (':' on Linux) instead of the directory
  separator, so every file below a sub-folder of the build (`assets/...`) comes back as
  index.html;
- the build's "MONAI Label" mode has only the MONAI Label panel: no segmentation panel, so
  no brush to correct a result and no way to save it. The mode's bundle is served with
  OHIF's own segmentation panel (tools, "Export DICOM SEG" to the DICOMweb server) added.
"""

import logging
import sys
from pathlib import Path

from fastapi import Depends
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute

import monailabel
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC
from monailabel.utils.others.generic import get_mime_type

logger = logging.getLogger(__name__)

OHIF_DIR = Path(monailabel.__file__).resolve().parent / "endpoints" / "static" / "ohif"

# (text in the build, replacement), applied to the bundles that contain the text
BUNDLE_PATCHES = [
    # the MONAI Label mode's right panels, plus OHIF's segmentation panel
    ("rightPanels: [monailabel.monaiLabel]",
     "rightPanels: [monailabel.monaiLabel, '@ohif/extension-cornerstone.panelModule.panelSegmentation']"),
    # the panel's "Export DICOM SEG" calls this without a data source: use the active one (the DICOMweb server)
    ("storeSegmentation: async ({\n      segmentationId,\n      dataSource\n    }) => {",
     "storeSegmentation: async ({\n      segmentationId,\n      dataSource = extensionManager.getActiveDataSource()[0]\n    }) => {"),
]
_patched: dict = {}  # bundle name -> patched bytes


def patched_bundles() -> dict:
    """The build's JavaScript bundles that BUNDLE_PATCHES change, changed."""
    if not _patched:
        found = set()
        for f in OHIF_DIR.glob("*.js"):
            text = f.read_text(encoding="utf-8", errors="surrogateescape")
            hits = [(a, b) for a, b in BUNDLE_PATCHES if a in text]
            for a, b in hits:
                text = text.replace(a, b)
                found.add(a)
            if hits:
                _patched[f.name] = text.encode("utf-8", errors="surrogateescape")
        for a, _ in BUNDLE_PATCHES:
            if a not in found:
                logger.warning(f"OHIF build at {OHIF_DIR}: {a!r} not found; that fix is not applied")
    return _patched


def ohif_file(path: str = "") -> Response:
    """The build's file at `path`; index.html for the viewer's own routes (/ohif/viewer?...)."""
    if path in patched_bundles():
        return Response(patched_bundles()[path], media_type="application/javascript")
    target = (OHIF_DIR / path).resolve() if path else OHIF_DIR / "index.html"
    if not target.is_file() or not target.is_relative_to(OHIF_DIR):
        target = OHIF_DIR / "index.html"
    return FileResponse(str(target), media_type=get_mime_type(str(target)))


def serve_ohif_nested_paths() -> bool:
    """Register `ohif_file` ahead of monailabel's route; False outside the server (nothing to fix)."""
    server = sys.modules.get("monailabel.app")
    if server is None or not hasattr(server, "app"):
        return False
    routes = server.app.router.routes
    if not any(getattr(r, "endpoint", None) is ohif_file for r in routes):
        routes.insert(0, APIRoute(f"{settings.MONAI_LABEL_API_STR}/ohif/{{path:path}}", ohif_file, methods=["GET"],
                                  include_in_schema=False,
                                  dependencies=[Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))]))
        logger.info(f"OHIF served from {OHIF_DIR} (nested paths fixed)")
    return True
