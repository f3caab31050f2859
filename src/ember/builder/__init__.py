"""Image building: the debootstrap base image, build steps, registry pulls."""

from ember.builder.base import ensure_base_image

__all__ = ["ensure_base_image"]
