"""The shipped model configs are open_clip model names once ``lightning_plugins.models`` is
imported: plain open_clip code builds them and their tokenizers."""

from __future__ import annotations

import json
import subprocess
import sys

from lightning_plugins.models import shipped_model_names

SCRIPT = """
import json, open_clip
assert not set(NAMES) & set(open_clip.list_models()), "registered before the import"
import lightning_plugins.models
found = {}
for name in NAMES:
    model = open_clip.create_model(name)
    tokenizer = open_clip.get_tokenizer(name)
    found[name] = {
        "embed_dim": model.text_projection.shape[1],
        "context_length": tokenizer(["a photo of a square"]).shape[1],
        "image_size": model.visual.image_size[0],
    }
print(json.dumps(found))
"""


def test_shipped_configs_registered_on_import() -> None:
    names = shipped_model_names()
    assert names == ["ViT-Micro-P8-32", "ViT-Tiny-P8-32"]
    done = subprocess.run(
        [sys.executable, "-c", f"NAMES = {names!r}\n{SCRIPT}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "ViT-Micro-P8-32": {"embed_dim": 32, "context_length": 16, "image_size": 32},
        "ViT-Tiny-P8-32": {"embed_dim": 96, "context_length": 32, "image_size": 32},
    }
