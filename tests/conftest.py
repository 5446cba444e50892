"""Session-wide test settings: no DVC analytics, no network for model weights."""

from __future__ import annotations

import os

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
