"""vasomim: vascular anatomy-aware masked image modeling for X-ray angiogram vessel segmentation.

Implements VasoMIM (Huang et al., AAAI 2026) end to end: anatomy extraction, UNeXt-S segmentor,
anatomy-guided MAE pre-training, fine-tuning with a U-Net-style decoder, evaluation (DSC, clDice),
inference, export and reports.
"""

__version__ = "0.1.0"
