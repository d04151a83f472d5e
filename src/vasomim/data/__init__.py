"""Reading angiograms and masks, dataset sources, joint transforms and the synthetic generator."""

from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, read_image, read_mask, write_png_atomic

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "read_image", "read_mask", "write_png_atomic"]
