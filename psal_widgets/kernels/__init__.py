"""The GPU kernel module: all torch compute of psal_widgets, on CUDA/MPS when present, else CPU.

Usable on its own, without any widget: filter index, profiles, statistics, input saliency,
CAM adapter and the sorted layout of a profile.
"""
from .basis import SaliencyBasis
from .cam import cam_map, conv_layer_names, default_cam_layer
from .device import pick_device
from .filters import ConvLayer, FilterIndex
from .layout import sorted_profile
from .profiles import ProfileBatch, filter_profiles, per_filter, standardize
from .saliency import InputSaliency, boosted_target, cosine_distance
from .stats import FilterStats, RunningMoments

__all__ = [
    "ConvLayer",
    "FilterIndex",
    "FilterStats",
    "InputSaliency",
    "ProfileBatch",
    "RunningMoments",
    "SaliencyBasis",
    "boosted_target",
    "cam_map",
    "conv_layer_names",
    "cosine_distance",
    "default_cam_layer",
    "filter_profiles",
    "per_filter",
    "pick_device",
    "sorted_profile",
    "standardize",
]
