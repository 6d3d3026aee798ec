"""The viridis colour map in numpy (matplotlib is not a dependency); jet lives in radar.py.

viridis (van der Walt & Smith, matplotlib 1.5, 2015) is perceptually uniform: its lightness rises steadily from
dark purple to yellow, so equal steps in dB look like equal steps in the image. We interpolate linearly in sRGB
between 17 of its published colours: entries 0, 16, 32, ..., 240 and 255 of matplotlib's 256-entry table, i.e.
at u = index / 255. Between them the table is nearly straight (at most ~2/255 from the chord, in blue near 0.9).
"""

import numpy as np

VIRIDIS_HEX = ("#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
               "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725")
VIRIDIS = np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in VIRIDIS_HEX])  # (17, 3) sRGB in [0, 1]


def viridis(u):
    """viridis colour map of u in [0, 1] (any shape) -> RGB floats (..., 3) in [0, 1]; values outside are clipped."""
    knots = np.append(np.arange(0, 256, 16), 255) / 255  # (17,) u of each anchor colour
    u = np.clip(u, 0, 1)
    return np.stack([np.interp(u, knots, VIRIDIS[:, c]) for c in range(3)], -1)  # (..., 3)
