"""The one exception every artifact refusal raises."""

from __future__ import annotations


class ArtifactError(Exception):
    """An artifact cannot be written, read or trusted.

    The message names the file (or directory) concerned and the reason, e.g.
    ``/models/v3/tensors.safetensors: sha256 mismatch (manifest says 3f.., file has 9a..)``.
    """
