"""vasomim: vascular anatomy-aware masked image modeling for X-ray angiogram vessel segmentation.

Implements VasoMIM (Huang et al., AAAI 2026) end to end: anatomy extraction, UNeXt-S segmentor,
anatomy-guided MAE pre-training, fine-tuning with a U-Net-style decoder, evaluation (DSC, clDice),
inference, export and reports.

The Python API::

    import vasomim
    model = vasomim.load_model("runs/ft/seed0/fold0/best.pth")   # or an exported model folder
    prob, mask = vasomim.segment(model, "frame.png")             # or a 2-D NumPy array
    image = vasomim.read_image("frame.png")                      # gray float32 in [0, 1]
    anatomy = vasomim.extract_anatomy(image)                      # Sato vesselness pseudo-label

The names are imported on first use, so ``import vasomim`` (and the command line) stays light.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "extract_anatomy", "load_model", "read_image", "segment"]

#: public name -> module that defines it
_LAZY = {
    "load_model": "vasomim.inference",
    "segment": "vasomim.inference",
    "read_image": "vasomim.data.io",
    "extract_anatomy": "vasomim.anatomy",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vasomim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
