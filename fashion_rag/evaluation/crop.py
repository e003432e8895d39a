"""The regions of a result image that the reference's evaluation scores (utils/val_metrics.py).

Both scores look only at the repainted garment, never at the whole photo:
- the *garment crop*: the bounding box of the mask (torchvision's masks_to_boxes, inclusive),
  every pixel of the box outside the mask set to white ("always use mask to delete
  background");
- CLIP-T's input: that crop with its longer side resized to 224 (bilinear, antialiased:
  torchvision's Resize on a tensor) and centred on a white 224x224 square (padding split with
  round(), the rest after);
- CLIP-I's input: a square *texture patch* of that crop, 64 px at the reference's 512 px image
  height: the crop's centre (torchvision CenterCrop), or for lower-body garments a patch 15 px
  below the top of the box, horizontally at its middle (where trousers and skirts show their
  fabric, not the gap between the legs). Parts of a patch outside the crop are black, as
  torchvision's crop pads them.

Images are [H, W, 3] float in [0, 1] (ComfyUI's IMAGE layout), masks [H, W] with 1 = repainted
(binarised at 0.5, as the inpainting UNet binarises them). For other image heights than 512 the
patch size and offset scale with the height (64·H/512, 15·H/512), so a patch covers the same
part of the body; at 512 they are the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_T_SIZE = 224
REFERENCE_HEIGHT = 512  # the image height the reference's patch size and offset are given for
PATCH = 64
LOWER_BODY_TOP = 15


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of the pixels >= 0.5 (torchvision's masks_to_boxes)."""
    ys, xs = torch.nonzero(mask >= 0.5, as_tuple=True)
    if len(ys) == 0:
        raise ValueError("the mask is empty (no pixel >= 0.5): there is no repainted region to score")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def garment_crop(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask's bounding box of the image, [3, h, w], white outside the mask."""
    if tuple(mask.shape) != tuple(image.shape[:2]):
        raise ValueError(
            f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {image.shape[1]}x"
            f"{image.shape[0]}: score with the mask the image was inpainted with"
        )
    x0, y0, x1, y1 = mask_box(mask)
    crop = image[y0 : y1 + 1, x0 : x1 + 1, :3].movedim(-1, 0).float().clone()
    outside = mask[y0 : y1 + 1, x0 : x1 + 1] < 0.5
    crop[:, outside] = 1.0
    return crop


def clip_t_input(image: torch.Tensor, mask: torch.Tensor, size: int = CLIP_T_SIZE) -> torch.Tensor:
    """The garment crop fitted into a white size x size square, [3, size, size] in [0, 1]."""
    crop = garment_crop(image, mask)
    _, h, w = crop.shape
    if h > w:
        new_h, new_w = size, round(size * w / h)
    else:
        new_h, new_w = round(size * h / w), size
    resized = F.interpolate(crop[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    left, top = round((size - new_w) / 2), round((size - new_h) / 2)
    padded = torch.ones(3, size, size, dtype=resized.dtype)
    padded[:, top : top + new_h, left : left + new_w] = resized
    return padded.clamp(0, 1)


def _crop_padded(img: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """img[:, top:top+size, left:left+size], zero where that window leaves the image."""
    out = torch.zeros(img.shape[0], size, size, dtype=img.dtype)
    _, h, w = img.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, h), min(left + size, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = img[:, y0:y1, x0:x1]
    return out


def patch_size(image_height: int) -> int:
    return max(1, round(PATCH * image_height / REFERENCE_HEIGHT))


def clip_i_patch(image: torch.Tensor, mask: torch.Tensor, category: str) -> torch.Tensor:
    """The texture patch of the garment crop, [3, p, p], p = 64 at 512 px image height."""
    crop = garment_crop(image, mask)
    size = patch_size(image.shape[0])
    if category == "lower_body":
        x0, _, x1, _ = mask_box(mask)
        top = round(LOWER_BODY_TOP * image.shape[0] / REFERENCE_HEIGHT)
        return _crop_padded(crop, top, (x1 - x0) // 2 - size // 2, size)
    return _center_crop(crop, size)


def _center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop: zero-pad a side shorter than `size` (the odd pixel after), then
    take the window at offsets int(round((h - size) / 2)), int(round((w - size) / 2))."""
    _, h, w = img.shape
    if size > h or size > w:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        img = F.pad(img, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=0.0)
        _, h, w = img.shape
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[:, top : top + size, left : left + size]
