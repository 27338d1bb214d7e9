"""Study and image I/O: readers, DICOM import, PI-CAI and flat-folder layouts."""

from proqual.io.readers import IMAGE_SUFFIXES, Volume, image_suffix, read_volume, write_volume

__all__ = ["IMAGE_SUFFIXES", "Volume", "image_suffix", "read_volume", "write_volume"]
