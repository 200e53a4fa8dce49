"""Export parameters and the documented responses of the export endpoints."""

from __future__ import annotations

from typing import Any, Literal

LabelFormat = Literal["csv", "imagefolder", "coco"]
ModelFormat = Literal["onnx", "torchscript"]


_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "not logged in (no or a bad bearer token)", "content": _ERROR},
    403: {"description": "not an admin", "content": _ERROR},
}
ZIP_CONTENT = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
LABELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "format=csv: the CSV (text/csv); imagefolder or coco: a zip, streamed",
        "content": {"text/csv": {"schema": {"type": "string"}}, **ZIP_CONTENT},
    },
    **ADMIN_ERRORS,
    404: {"description": "the model version named does not exist", "content": _ERROR},
    422: {"description": "pseudo-labels or predictions asked for, but no model version is active", "content": _ERROR},
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a zip of the network and its model card (JSON), streamed", "content": ZIP_CONTENT},
    **ADMIN_ERRORS,
    404: {"description": "no such (or no active) model version, or it has no export in this format", "content": _ERROR},
}
