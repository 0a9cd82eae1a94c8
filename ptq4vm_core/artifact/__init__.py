"""Versioned quantized-model artifacts: integer weights, scales and zero points in safetensors,
and a JSON manifest with the policy, calibration provenance, metrics and file hashes.

    path = save_artifact(result, data, Path("models/w8a8"))
    artifact = load_artifact(path)          # verified, then rebuilt: artifact.model
    manifest = verify_artifact(path)        # the same checks, no model
    update_metrics(path, {"mad": 1.9})

Layout (format "ptq4vm-artifact", version 1): a directory with `manifest.json` and
`tensors.safetensors`; see `layout` for the tensor names and `packing` for integer storage.
"""

from ptq4vm_core.artifact.errors import ArtifactError
from ptq4vm_core.artifact.layout import MODEL_NAME
from ptq4vm_core.artifact.load import Artifact, load_artifact
from ptq4vm_core.artifact.manifest import (
    FORMAT,
    MANIFEST_FILE,
    SUPPORTED_VERSIONS,
    TENSORS_FILE,
    VERSION,
    LayerEntry,
    Manifest,
    read_manifest,
    update_metrics,
)
from ptq4vm_core.artifact.packing import Storage, pack_int4, unpack_int4
from ptq4vm_core.artifact.save import save_artifact
from ptq4vm_core.artifact.verify import verify_artifact

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "MODEL_NAME",
    "SUPPORTED_VERSIONS",
    "TENSORS_FILE",
    "VERSION",
    "Artifact",
    "ArtifactError",
    "LayerEntry",
    "Manifest",
    "Storage",
    "load_artifact",
    "pack_int4",
    "read_manifest",
    "save_artifact",
    "unpack_int4",
    "update_metrics",
    "verify_artifact",
]
