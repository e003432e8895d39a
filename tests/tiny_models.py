"""Tiny configs of the real architectures, for fast numerical tests (not part of the library)."""

from __future__ import annotations

from fashion_rag.inpaint.unet_layout import UNetLayout

# The Fashion-RAG UNet's architecture (27 input channels, 64-wide heads, GroupNorm-32-compatible
# widths), two levels deep and narrow.
TINY_UNET = UNetLayout(
    block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False),
    cross_attention_dim=64,
)
