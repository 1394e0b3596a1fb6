"""Dense prediction on the backbone API: a feature pyramid neck (`FPN`), a Semantic FPN head, a
`SegmentationModel` and its pixel-wise cross-entropy; `train` runs them on a synthetic task."""
from focalnet_jax.segmentation.fpn import FPN, resize_nearest
from focalnet_jax.segmentation.seg_head import SemanticFPNHead
from focalnet_jax.segmentation.segmentation import (SegmentationModel, confusion_matrix, cross_entropy_sums, mean_iou,
                                             pixel_cross_entropy)

__all__ = ["FPN", "SegmentationModel", "SemanticFPNHead", "confusion_matrix", "cross_entropy_sums", "mean_iou",
           "pixel_cross_entropy", "resize_nearest"]
