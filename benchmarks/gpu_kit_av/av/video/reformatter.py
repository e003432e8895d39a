"""ComfyUI 0.33.0's video types name these enums' members when they are imported (as dict keys);
the members it names, with PyAV's values (libavutil's AVColorPrimaries, AVColorRange,
AVColorTransferCharacteristic). Nothing in the GPU check converts video."""

from enum import IntEnum


class ColorPrimaries(IntEnum):
    BT709 = 1
    BT2020 = 9


class ColorRange(IntEnum):
    MPEG = 1
    JPEG = 2


class ColorTrc(IntEnum):
    BT709 = 1
    IEC61966_2_1 = 13
    SMPTE2084 = 16
    ARIB_STD_B67 = 18
