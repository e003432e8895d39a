"""The Fashion-RAG UNet's architecture, described once: its configs and its key layouts.

The reference ships `unet_120000.pth`, a plain state_dict of diffusers' UNet2DConditionModel
(SD2-inpainting architecture) whose `conv_in` takes 27 channels: noisy latent (4) | mask (1) |
masked-image latent (4) | pose heatmaps (18). ComfyUI's UNetModel holds the same weights under
LDM ("input_blocks/middle_block/output_blocks") names. `UNetLayout` lists every parameter in
both namings with its shape, is derived from the weights of either, and gives the configs of
both libraries (tests check it against the real classes of each). Files: unet_file.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from ..weights import WeightFileError, check_state_dict

LATENT_CHANNELS = 4
POSE_CHANNELS = 18
# What the caller concatenates to the noisy latent: mask | masked-image latent | pose.
CONDITION_CHANNELS = 1 + LATENT_CHANNELS + POSE_CHANNELS
FASHION_RAG_IN_CHANNELS = LATENT_CHANNELS + CONDITION_CHANNELS  # 27

# SD2's attention heads are 64 wide (320 channels / 5 heads); the width is not stored in the
# weights, so it is fixed here as ComfyUI's SD20 config fixes it.
SD2_HEAD_CHANNELS = 64

class UNetFileError(WeightFileError):
    """A UNet weight file that cannot be used, with a message that says what to do."""


@dataclass(frozen=True)
class UNetLayout:
    """The SD UNet family as Fashion-RAG uses it (defaults: the real Fashion-RAG UNet).

    attention_levels[i] says whether down level i (and its mirrored up level) has
    cross-attention transformers; the middle block always has one.
    """

    in_channels: int = FASHION_RAG_IN_CHANNELS
    out_channels: int = LATENT_CHANNELS
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    transformer_depth: int = 1
    cross_attention_dim: int = 1024
    use_linear_projection: bool = True
    head_channels: int = SD2_HEAD_CHANNELS

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one flag per entry of block_out_channels")
        for c in self.block_out_channels:
            # ComfyUI's UNetModel hard-codes GroupNorm(32, ...) and integer channel multipliers.
            if c % 32 or c % self.block_out_channels[0]:
                raise ValueError(
                    f"block_out_channels {self.block_out_channels}: each must be a multiple of 32 "
                    "and of the first one (ComfyUI's UNetModel needs both)"
                )
            if c % self.head_channels:
                raise ValueError(f"{c} channels do not split into {self.head_channels}-wide heads")

    @property
    def model_channels(self) -> int:
        return self.block_out_channels[0]

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def diffusers_config(self) -> dict:
        """Keyword arguments for diffusers' UNet2DConditionModel of this layout."""
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
        return dict(
            sample_size=64,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            transformer_layers_per_block=self.transformer_depth,
            cross_attention_dim=self.cross_attention_dim,
            # diffusers' SD2 configs store the number of heads under this (misleading) name.
            attention_head_dim=tuple(c // self.head_channels for c in self.block_out_channels),
            use_linear_projection=self.use_linear_projection,
            norm_num_groups=32,
            flip_sin_to_cos=True,
            freq_shift=0,
        )

    def ldm_config(self) -> dict:
        """ComfyUI's `unet_config` (the keyword arguments of comfy's UNetModel), dtype aside."""
        n = self.layers_per_block
        depth = [self.transformer_depth if a else 0 for a in self.attention_levels]
        return {
            "use_checkpoint": False,
            "image_size": 32,
            "use_spatial_transformer": True,
            "legacy": False,
            "adm_in_channels": None,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "model_channels": self.model_channels,
            "num_res_blocks": [n] * len(depth),
            "channel_mult": [c // self.model_channels for c in self.block_out_channels],
            "transformer_depth": [d for d in depth for _ in range(n)],
            # Outermost level first: UNetModel pops from the end while building output_blocks.
            "transformer_depth_output": [d for d in depth for _ in range(n + 1)],
            "transformer_depth_middle": self.transformer_depth,
            "use_linear_in_transformer": self.use_linear_projection,
            "context_dim": self.cross_attention_dim,
            "use_temporal_resblock": False,
            "use_temporal_attention": False,
            "num_heads": -1,
            "num_head_channels": self.head_channels,
        }

    def ldm_key_map(self) -> dict[str, str]:
        """diffusers parameter name -> LDM (ComfyUI) parameter name, for every parameter."""
        return {d: ldm for d, ldm, _ in self._parameters()}

    def diffusers_shapes(self) -> dict[str, tuple[int, ...]]:
        return {d: shape for d, _, shape in self._parameters()}

    def ldm_shapes(self) -> dict[str, tuple[int, ...]]:
        return {ldm: shape for _, ldm, shape in self._parameters()}

    # -- the architecture, module by module, in both namings --------------------------------

    def _parameters(self) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        ch = self.block_out_channels
        levels = len(ch)
        n = self.layers_per_block
        temb = self.time_embed_dim

        yield from _conv("conv_in", "input_blocks.0.0", ch[0], self.in_channels, 3)
        yield from _linear("time_embedding.linear_1", "time_embed.0", temb, ch[0])
        yield from _linear("time_embedding.linear_2", "time_embed.2", temb, temb)

        block, c_in = 1, ch[0]
        for i in range(levels):
            for j in range(n):
                d, ldm = f"down_blocks.{i}", f"input_blocks.{block}"
                yield from _resnet(f"{d}.resnets.{j}", f"{ldm}.0", c_in, ch[i], temb)
                c_in = ch[i]
                if self.attention_levels[i]:
                    yield from self._transformer(f"{d}.attentions.{j}", f"{ldm}.1", ch[i])
                block += 1
            if i < levels - 1:
                d, ldm = f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{block}.0.op"
                yield from _conv(d, ldm, ch[i], ch[i], 3)
                block += 1

        yield from _resnet("mid_block.resnets.0", "middle_block.0", ch[-1], ch[-1], temb)
        yield from self._transformer("mid_block.attentions.0", "middle_block.1", ch[-1])
        yield from _resnet("mid_block.resnets.1", "middle_block.2", ch[-1], ch[-1], temb)

        rev, rev_attn = ch[::-1], self.attention_levels[::-1]
        block, prev = 0, rev[0]
        for x in range(levels):
            out = rev[x]
            skip_last = rev[min(x + 1, levels - 1)]  # the skip coming from the level above
            for j in range(n + 1):
                c_in = (prev if j == 0 else out) + (skip_last if j == n else out)
                d, ldm = f"up_blocks.{x}", f"output_blocks.{block}"
                yield from _resnet(f"{d}.resnets.{j}", f"{ldm}.0", c_in, out, temb)
                sub = 1
                if rev_attn[x]:
                    yield from self._transformer(f"{d}.attentions.{j}", f"{ldm}.1", out)
                    sub = 2
                if j == n and x < levels - 1:
                    yield from _conv(f"{d}.upsamplers.0.conv", f"{ldm}.{sub}.conv", out, out, 3)
                block += 1
            prev = out

        yield from _norm("conv_norm_out", "out.0", ch[0])
        yield from _conv("conv_out", "out.2", self.out_channels, ch[0], 3)

    def _transformer(self, d: str, ldm: str, c: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        # Transformer2DModel and ComfyUI's SpatialTransformer use the same inner names.
        ctx = self.cross_attention_dim
        yield from _norm(f"{d}.norm", f"{ldm}.norm", c)
        proj = (c, c) if self.use_linear_projection else (c, c, 1, 1)
        for name in ("proj_in", "proj_out"):
            yield f"{d}.{name}.weight", f"{ldm}.{name}.weight", proj
            yield f"{d}.{name}.bias", f"{ldm}.{name}.bias", (c,)
        for t in range(self.transformer_depth):
            for name, shape in _transformer_block(c, ctx):
                yield f"{d}.transformer_blocks.{t}.{name}", f"{ldm}.transformer_blocks.{t}.{name}", shape


def _conv(d: str, ldm: str, c_out: int, c_in: int, k: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield f"{d}.weight", f"{ldm}.weight", (c_out, c_in, k, k)
    yield f"{d}.bias", f"{ldm}.bias", (c_out,)


def _linear(d: str, ldm: str, c_out: int, c_in: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield f"{d}.weight", f"{ldm}.weight", (c_out, c_in)
    yield f"{d}.bias", f"{ldm}.bias", (c_out,)


def _norm(d: str, ldm: str, c: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield f"{d}.weight", f"{ldm}.weight", (c,)
    yield f"{d}.bias", f"{ldm}.bias", (c,)


def _resnet(d: str, ldm: str, c_in: int, c_out: int, temb: int) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    yield from _norm(f"{d}.norm1", f"{ldm}.in_layers.0", c_in)
    yield from _conv(f"{d}.conv1", f"{ldm}.in_layers.2", c_out, c_in, 3)
    yield from _linear(f"{d}.time_emb_proj", f"{ldm}.emb_layers.1", c_out, temb)
    yield from _norm(f"{d}.norm2", f"{ldm}.out_layers.0", c_out)
    yield from _conv(f"{d}.conv2", f"{ldm}.out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        yield from _conv(f"{d}.conv_shortcut", f"{ldm}.skip_connection", c_out, c_in, 1)


def _transformer_block(c: int, ctx: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    for i in (1, 2, 3):
        yield f"norm{i}.weight", (c,)
        yield f"norm{i}.bias", (c,)
    for attn, kv in (("attn1", c), ("attn2", ctx)):
        yield f"{attn}.to_q.weight", (c, c)
        yield f"{attn}.to_k.weight", (c, kv)
        yield f"{attn}.to_v.weight", (c, kv)
        yield f"{attn}.to_out.0.weight", (c, c)
        yield f"{attn}.to_out.0.bias", (c,)
    yield "ff.net.0.proj.weight", (8 * c, c)  # GEGLU: two 4c halves
    yield "ff.net.0.proj.bias", (8 * c,)
    yield "ff.net.2.weight", (c, 4 * c)
    yield "ff.net.2.bias", (c,)


# The real Fashion-RAG UNet (SD2-inpainting with 27 input channels).
FULL = UNetLayout()


# -- deriving a layout from weights ----------------------------------------------------------


def _indices(keys, prefix: str) -> list[int]:
    """Sorted integers i of keys that start with f"{prefix}{i}."."""
    found = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _head_channels(widths: list[int]) -> int:
    # Real SD2 widths are multiples of 64. Toy test models may be narrower: use the widest
    # head that divides every attention width so they still build (their parity references
    # must then use the same head width).
    g = math.gcd(*widths)
    return SD2_HEAD_CHANNELS if g % SD2_HEAD_CHANNELS == 0 else math.gcd(g, SD2_HEAD_CHANNELS)


def _layout(
    source: str, in_ch: int, out_ch: int, levels: list[tuple[int, int, bool]], depth: int,
    ctx: int | None, linear: bool,
) -> UNetLayout:
    """levels: (channels, res blocks, has attention) per down level."""
    counts = {n for _, n, _ in levels}
    if len(counts) != 1:
        raise UNetFileError(f"{source}: levels have different numbers of res blocks {sorted(counts)}; "
                            "this is not an SD-style UNet")
    if ctx is None:
        raise UNetFileError(f"{source}: no cross-attention found; this is not an SD-style UNet")
    widths = [c for c, _, a in levels if a] + [levels[-1][0]]
    try:
        return UNetLayout(
            in_channels=in_ch, out_channels=out_ch,
            block_out_channels=tuple(c for c, _, _ in levels), layers_per_block=counts.pop(),
            attention_levels=tuple(a for _, _, a in levels), transformer_depth=depth,
            cross_attention_dim=ctx, use_linear_projection=linear,
            head_channels=_head_channels(widths),
        )
    except ValueError as exc:
        raise UNetFileError(f"{source}: unsupported UNet layout: {exc}") from None


def layout_from_diffusers(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> UNetLayout:
    """Read the architecture from a diffusers-layout UNet state dict."""
    try:
        conv_in = sd["conv_in.weight"]
        levels = []
        for i in _indices(sd, "down_blocks."):
            n = len(_indices(sd, f"down_blocks.{i}.resnets."))
            c = sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]
            levels.append((c, n, bool(_indices(sd, f"down_blocks.{i}.attentions."))))
        attn = "mid_block.attentions.0"
        depth = len(_indices(sd, f"{attn}.transformer_blocks."))
        ctx = sd[f"{attn}.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        linear = sd[f"{attn}.proj_in.weight"].ndim == 2
        out_ch = sd["conv_out.weight"].shape[0]
    except KeyError as exc:
        raise UNetFileError(f"{source}: not a complete diffusers UNet state dict (no {exc})") from None
    if not levels:
        raise UNetFileError(f"{source}: no down_blocks found; not a diffusers UNet state dict")
    return _layout(source, conv_in.shape[1], out_ch, levels, depth, ctx, linear)


def layout_from_ldm(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> UNetLayout:
    """Read the architecture from an LDM/ComfyUI-layout UNet state dict (no prefix)."""
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        levels: list[tuple[int, int, bool]] = []
        count, channels, attention = 0, 0, False
        for b in _indices(sd, "input_blocks.")[1:]:
            if f"input_blocks.{b}.0.op.weight" in sd:  # a downsampler closes a level
                levels.append((channels, count, attention))
                count, attention = 0, False
            else:
                channels = sd[f"input_blocks.{b}.0.out_layers.3.weight"].shape[0]
                attention = attention or f"input_blocks.{b}.1.proj_in.weight" in sd
                count += 1
        levels.append((channels, count, attention))
        depth = len(_indices(sd, "middle_block.1.transformer_blocks."))
        ctx = sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        linear = sd["middle_block.1.proj_in.weight"].ndim == 2
        out_ch = sd["out.2.weight"].shape[0]
    except KeyError as exc:
        raise UNetFileError(f"{source}: not a complete LDM UNet state dict (no {exc})") from None
    return _layout(source, conv_in.shape[1], out_ch, levels, depth, ctx, linear)


# -- conversion and strict checks ------------------------------------------------------------


def check_layout(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                 source: str) -> None:
    """Every expected key present with its shape, and nothing else; else UNetFileError."""
    check_state_dict(sd, expected, source, "a complete UNet of the layout its keys imply",
                     error=UNetFileError)


def diffusers_to_ldm(
    sd: Mapping[str, torch.Tensor], layout: UNetLayout | None = None, source: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout UNet state dict to LDM/ComfyUI names, checking it strictly."""
    layout = layout or layout_from_diffusers(sd, source)
    check_layout(sd, layout.diffusers_shapes(), source)
    names = layout.ldm_key_map()
    return {names[k]: v for k, v in sd.items()}
