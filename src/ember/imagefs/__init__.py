"""imagefs: images as manifests over content-addressed chunks, served lazily to containers.

- `store`: where chunks and image metadata live (a local directory or S3-compatible storage).
- `content`: how a chunk is named (BLAKE3), compressed (zstd) and verified.
- `manifest`: an image's file tree and configuration; its digest is the image id.
- `pack`: turning a directory tree into a manifest and chunks (used by the builder).
- `metadata`: the erofs image of a manifest that overlay serves stat/readdir from.
- `cache`, `fuse`, `daemon`: the per-host object cache and the FUSE server for misses.
- `client`: what the worker uses to ask the host's daemon for an image's layers.
"""
