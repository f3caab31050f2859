"""Making a manifest an image: its erofs metadata image and content index, then the manifest,
into the chunk store.

The manifest goes last: an image whose manifest can be read is complete.
"""

from __future__ import annotations

from pathlib import Path

from ember.imagefs import content, index, manifest
from ember.imagefs.index import ContentIndex
from ember.imagefs.manifest import Manifest
from ember.imagefs.metadata import build_metadata_image
from ember.imagefs.store import ChunkStore


def publish(image: Manifest, store: ChunkStore, scratch: Path, *, same_tree_as: str = "") -> str:
    """Store `image` and return its id. `same_tree_as` names an image with the same file tree
    (only the config differs), whose metadata image is reused."""
    image_id = image.image_id
    if store.exists(manifest.manifest_key(image_id)):
        return image_id
    if same_tree_as:
        blob = store.get(manifest.metadata_key(same_tree_as))
    else:
        output = scratch / "meta.erofs"
        build_metadata_image(image, output, scratch / "stubs")
        blob = content.compress(output.read_bytes())
        output.unlink()
    store.put(manifest.metadata_key(image_id), blob)
    index.save(store, image_id, ContentIndex.from_manifest(image))
    manifest.save(store, image)
    return image_id
