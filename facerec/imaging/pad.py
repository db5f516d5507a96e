"""Edge padding: the LFW benchmark's way of giving tight face crops detector context."""

from __future__ import annotations

import cv2
import numpy as np


def pad_edges(image: np.ndarray, pad: int) -> np.ndarray:
    """``image`` uint8[H, W, C] grown by ``pad`` px per side, repeating its border pixels."""
    if pad <= 0:
        return image
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
