"""Every way an artifact can be damaged or edited is refused with an error naming the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor

from ptq4vm_core.artifact import (
    MANIFEST_FILE,
    TENSORS_FILE,
    ArtifactError,
    load_artifact,
    read_manifest,
    verify_artifact,
)
from ptq4vm_core.assets import sha256_file


def edit_manifest(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    file = path / MANIFEST_FILE
    raw = json.loads(file.read_text())
    edit(raw)
    file.write_text(json.dumps(raw, indent=2))


def rewrite_tensors(path: Path, edit: Callable[[dict[str, Tensor]], None]) -> None:
    """Edits the tensor file and re-records its hash, as a careless tool would: only the
    content checks (not the file hash) can then catch the damage."""
    file = path / TENSORS_FILE
    with safe_open(file, "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(tensors)
    file.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    digest = sha256_file(file)
    edit_manifest(path, lambda raw: raw["files"].update({TENSORS_FILE: digest}))


def test_flipped_byte_in_tensors(w8a8_copy: Path) -> None:
    file = w8a8_copy / TENSORS_FILE
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: sha256 mismatch"):
        load_artifact(w8a8_copy)
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors"):
        verify_artifact(w8a8_copy)


def test_changed_policy_bits(w8a8_copy: Path) -> None:
    edit_manifest(w8a8_copy, lambda raw: raw["policy"].update(weight_bits=4))
    with pytest.raises(ArtifactError, match=r"manifest\.json: invalid manifest.*the policy"):
        load_artifact(w8a8_copy)


def test_changed_layer_bits_in_table(w8a8_copy: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["layers"]["decode0.conv1"]["weight_bits"] = 6

    edit_manifest(w8a8_copy, edit)
    with pytest.raises(ArtifactError, match=r"manifest\.json.*decode0\.conv1"):
        verify_artifact(w8a8_copy)


def test_consistent_edit_of_policy_and_table_is_caught(w8a8_copy: Path) -> None:
    """6-bit weights still store as int8 and the stored integers still fit: only the digest
    bound into the tensor file reveals that the manifest was edited."""

    def edit(raw: dict[str, Any]) -> None:
        raw["policy"]["weight_bits"] = 7
        for name, entry in raw["layers"].items():
            if name not in raw["policy"]["overrides"]:
                entry["weight_bits"] = 7

    edit_manifest(w8a8_copy, edit)
    with pytest.raises(ArtifactError, match=r"manifest\.json|outside the 7-bit grid"):
        load_artifact(w8a8_copy)


def test_policy_edit_that_fits_the_tensors_is_caught(w8a8_copy: Path) -> None:
    """Dropping the 8-bit overrides of a w8a8 policy changes nothing the tensors could
    contradict; the digest bound into the tensor file still catches it."""
    edit_manifest(w8a8_copy, lambda raw: raw["policy"].update(overrides={}))
    with pytest.raises(ArtifactError, match=r"manifest\.json: does not match tensors"):
        load_artifact(w8a8_copy)


@pytest.mark.parametrize(
    ("field", "value"),
    [("bits", "w4a8"), ("base_weights_sha256", "0" * 64), ("method", "brecq")],
)
def test_other_manifest_edits_are_caught(w8a8_copy: Path, field: str, value: str) -> None:
    edit_manifest(w8a8_copy, lambda raw: raw.update({field: value}))
    with pytest.raises(ArtifactError, match=r"manifest\.json: does not match tensors"):
        verify_artifact(w8a8_copy)


def test_unknown_version(w8a8_copy: Path) -> None:
    edit_manifest(w8a8_copy, lambda raw: raw.update(version=2))
    with pytest.raises(
        ArtifactError, match=r"manifest\.json: artifact format version 2 .* reads version\(s\) 1"
    ):
        load_artifact(w8a8_copy)


def test_not_an_artifact_format(w8a8_copy: Path) -> None:
    edit_manifest(w8a8_copy, lambda raw: raw.update(format="something-else"))
    with pytest.raises(ArtifactError, match="not a ptq4vm artifact manifest"):
        read_manifest(w8a8_copy)


def test_missing_tensor_file(w8a8_copy: Path) -> None:
    (w8a8_copy / TENSORS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: missing"):
        load_artifact(w8a8_copy)


def test_missing_or_broken_manifest(w8a8_copy: Path, tmp_path: Path) -> None:
    (w8a8_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        load_artifact(w8a8_copy)
    (w8a8_copy / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        load_artifact(w8a8_copy)
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        load_artifact(tmp_path / "nowhere")


def test_missing_and_extra_tensors(w8a8_copy: Path) -> None:
    def edit(tensors: dict[str, Tensor]) -> None:
        del tensors["decode0.conv1.weight_scale"]
        tensors["stowaway"] = torch.zeros(1)

    rewrite_tensors(w8a8_copy, edit)
    with pytest.raises(
        ArtifactError,
        match=r"tensors\.safetensors: .*missing \['decode0\.conv1\.weight_scale'\], "
        r"unexpected \['stowaway'\]",
    ):
        load_artifact(w8a8_copy)


def test_integer_outside_the_grid(w8a8_copy: Path) -> None:
    def edit(tensors: dict[str, Tensor]) -> None:
        tensors["project_mat.weight_q"].view(-1)[0] = -128  # int8 but not on [-127, 127]

    rewrite_tensors(w8a8_copy, edit)
    with pytest.raises(
        ArtifactError, match=r"tensors\.safetensors: layer 'project_mat'.*outside the 8-bit grid"
    ):
        verify_artifact(w8a8_copy)


def test_wrong_dtype_and_bad_scale(w8a8_copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in (MANIFEST_FILE, TENSORS_FILE):
        (other / name).write_bytes((w8a8_copy / name).read_bytes())

    def to_int32(tensors: dict[str, Tensor]) -> None:
        tensors["project_mat.weight_q"] = tensors["project_mat.weight_q"].to(torch.int32)

    rewrite_tensors(w8a8_copy, to_int32)
    with pytest.raises(ArtifactError, match=r"layer 'project_mat'.*expected torch\.int8"):
        verify_artifact(w8a8_copy)

    def zero_scale(tensors: dict[str, Tensor]) -> None:
        tensors["project_mat.act_scale"].zero_()

    rewrite_tensors(other, zero_scale)
    with pytest.raises(ArtifactError, match="act_scale must be finite and > 0"):
        verify_artifact(other)


def test_tensor_file_from_another_artifact(w8a8_copy: Path, w4a4_dir: Path) -> None:
    (w8a8_copy / TENSORS_FILE).write_bytes((w4a4_dir / TENSORS_FILE).read_bytes())
    digest = sha256_file(w8a8_copy / TENSORS_FILE)
    edit_manifest(w8a8_copy, lambda raw: raw["files"].update({TENSORS_FILE: digest}))
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors"):
        load_artifact(w8a8_copy)


def test_file_names_must_be_plain(w8a8_copy: Path) -> None:
    edit_manifest(w8a8_copy, lambda raw: raw["files"].update({"../x": "0" * 64}))
    with pytest.raises(ArtifactError, match="plain file names"):
        read_manifest(w8a8_copy)
