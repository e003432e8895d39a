"""How a garment image becomes pixels (fashion_rag/images.py), at the edges the catalog tests do
not reach: 16-bit and palette images, EXIF rotation, the pixel and byte bounds at exactly their
value, and the resampling of the fitted garment against PIL's own resize. Expected values are
literals or PIL computed another way.
Mutations caught (each planted and seen failing here; all passed the suite before): 16-bit levels
clipped at 255 instead of their top 8 bits; the pixel bound refusing exactly MAX_IMAGE_PIXELS;
BILINEAR in place of BICUBIC when fitting; EXIF rotation dropped; the hash's growth bound
refusing a file of exactly MAX_IMAGE_BYTES; a palette image's transparent colour kept (black);
the size check before reading one byte loose (the read's own bound then refused the file, after
reading it)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from fashion_rag import images
from fashion_rag.images import TOO_LARGE, ImageLoadError, decode_image, fit_garment, image_sha256, load_image


def test_16_bit_greyscale_keeps_its_top_8_bits(tmp_path):
    # 25855 / 256 = 100.996: the top 8 bits are 100 (a rounding conversion would give 101).
    levels = np.array([[0, 255, 256, 25855, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "g16.png"))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 100, 255] and (rgb[..., 0] == rgb[..., 2]).all()


def test_palette_transparency_and_alpha_go_onto_white(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[255, 255, 255], [200, 10, 20]]]
    la = Image.fromarray(np.array([[[10, 0], [10, 255], [10, 128]]], dtype=np.uint8), "LA")
    la.save(tmp_path / "la.png")
    # 128/255 of grey 10 over white: 10 * 128/255 + 255 * 127/255 = 132.0 (PIL rounds half up).
    assert np.asarray(load_image(tmp_path / "la.png"))[0, :, 0].tolist() == [255, 10, 132]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.png", exif=exif)
    out = load_image(tmp_path / "rot.png")
    assert out.size == (10, 20)
    assert out.getpixel((9, 0)) == (255, 0, 0)  # the top-left corner, turned clockwise: top-right


def test_pixel_and_byte_bounds_at_exactly_their_value(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    ok, big = tmp_path / "ok.png", tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(ok)
    Image.new("RGB", (101, 1)).save(big)
    assert load_image(ok).size == (10, 10)
    with pytest.raises(ImageLoadError, match="more than 100") as err:
        load_image(big)
    assert err.value.reason == TOO_LARGE
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    exact, over = tmp_path / "exact.bin", tmp_path / "over.bin"
    exact.write_bytes(bytes(range(100)))
    over.write_bytes(bytes(101))
    assert image_sha256(exact) == hashlib.sha256(bytes(range(100))).hexdigest()
    for reader in (image_sha256, images.read_image_bytes):  # refused by its size, before any read
        with pytest.raises(ImageLoadError, match="too large: 101 bytes, more than 100") as err:
            reader(over)
        assert err.value.reason == TOO_LARGE
    assert images.read_image_bytes(exact) == bytes(range(100))


def test_fitting_resamples_bicubic_as_pil_resizes():
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8))  # 2:1 -> 384x192
    expected = np.full((512, 384, 3), 255, dtype=np.uint8)
    expected[160:352] = np.asarray(photo.resize((384, 192), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(fit_garment(photo)), expected)

def test_a_label_map_keeps_its_stored_mode(tmp_path):
    """rgb=False: one channel of label ids stays one channel, ids unchanged."""
    Image.fromarray(np.array([[0, 5], [13, 17]], dtype=np.uint8), "L").save(tmp_path / "labels.png")
    kept = decode_image((tmp_path / "labels.png").read_bytes(), "labels.png", rgb=False)
    assert kept.mode == "L" and np.asarray(kept).tolist() == [[0, 5], [13, 17]]
