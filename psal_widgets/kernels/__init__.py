"""The GPU kernel module: all torch compute of psal_widgets, on CUDA/MPS when present, else CPU.

Usable on its own, without any widget: filter index, profiles, statistics, input saliency,
CAM adapter, the sorted layout of a profile, turning filters off and neighbour search; one
helper for ``requires_grad`` (``grad_mode``) and one standardization formula (``standardize``).
"""
from .basis import SaliencyBasis
from .cam import cam_map, conv_layer_names, default_cam_layer
from .device import pick_device
from .features import FeatureTap, find_classifier
from .filters import ConvLayer, FilterIndex
from .grad_mode import requires_grad
from .interventions import FilterPruner, find_conv_batchnorms, find_conv_norms, pruned_parameters, select_filters
from .layout import sorted_profile
from .neighbours import all_neighbours, cosine_neighbours, layer_columns, standardize_bank
from .profiles import ProfileBatch, filter_profiles, per_filter, standardize
from .saliency import InputSaliency, boosted_target, cosine_distance
from .standardize import profile_mode, safe_std, zscore
from .stats import FilterStats, RunningMoments

__all__ = [
    "ConvLayer",
    "FeatureTap",
    "FilterIndex",
    "FilterPruner",
    "FilterStats",
    "InputSaliency",
    "ProfileBatch",
    "RunningMoments",
    "SaliencyBasis",
    "all_neighbours",
    "boosted_target",
    "cam_map",
    "conv_layer_names",
    "cosine_distance",
    "cosine_neighbours",
    "default_cam_layer",
    "filter_profiles",
    "find_classifier",
    "find_conv_batchnorms",
    "find_conv_norms",
    "layer_columns",
    "per_filter",
    "pick_device",
    "profile_mode",
    "pruned_parameters",
    "requires_grad",
    "safe_std",
    "select_filters",
    "sorted_profile",
    "standardize",
    "standardize_bank",
    "zscore",
]
