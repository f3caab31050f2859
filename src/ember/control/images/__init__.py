"""Images: building step chains on workers, the build cache, listing and deleting images."""

from ember.control.images.builds import ImageBuilds, cache_key, describe_step

__all__ = ["ImageBuilds", "cache_key", "describe_step"]
