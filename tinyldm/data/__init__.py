"""Data for tinyldm: user image folders, the built-in micro-Doppler gait simulator, spectrogram transforms."""

from tinyldm.data.datasets import PRESETS, UserImageFolder, default_data_dir
from tinyldm.data.errors import DataError
from tinyldm.data.images import load_image, to_tensor
from tinyldm.data.transforms import SpectrogramAugment, to_uint8

__all__ = ["PRESETS", "DataError", "SpectrogramAugment", "UserImageFolder", "default_data_dir", "load_image",
           "to_tensor", "to_uint8"]
