"""The models shipped in models/: each file matches its card's checksum, each card loads through
the contract it names, and the whole folder stays small enough to commit."""

from __future__ import annotations

import hashlib
import json

import pytest

from sam3d_addon import contract

SHIPPED = contract.available_models()


@pytest.mark.parametrize("name", SHIPPED)
def test_files_match_the_card(name):
    folder = contract.MODELS_DIR / name
    card = json.loads((folder / "model.json").read_text())
    assert set(card["sha256"]) == set(card["files"])
    for stage, filename in card["files"].items():
        assert hashlib.sha256((folder / filename).read_bytes()).hexdigest() == card["sha256"][stage], filename
    for entry in card.get("training_files", {}).values():  # e.g. the encoder `train --init` needs
        assert hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    listed = set(card["files"].values()) | {e["file"] for e in card.get("training_files", {}).values()}
    assert {p.name for p in folder.iterdir()} == listed | {"model.json"}
    loaded = (contract.load_texture_card if card["contract"] == contract.TEXTURE_CONTRACT_NAME else contract.load_card)(name)
    assert loaded.name == card["name"] and loaded.kind in ("geometry", "texture")


def test_models_folder_is_small():
    sizes = [p.stat().st_size for p in contract.MODELS_DIR.rglob("*") if p.is_file()]
    assert max(sizes) < 50 * 2**20 and sum(sizes) < 50 * 2**20
