"""A stand-in for PyAV in the GPU kit (benchmarks/gpu_check.sh --kit installs it instead of the
34 MiB av wheel): ComfyUI 0.3.75's comfy_api.latest imports `av`, `av.container.InputContainer`
and `av.subtitles.stream.SubtitleStream` for its video and audio types (0.33.0 also the colour
enums of `av.video.reformatter`, whose members it uses at import), and the GPU check never
reads or writes video or audio. Every use raises NotInGPUKit, an ImportError so that libraries
probing for PyAV (torchvision's `try: import av; av.logging...` `except ImportError`) take it
for absent; no distribution metadata either, so metadata-based probes (diffusers') find none.
"""

MESSAGE = ("{name}: video and audio are not part of the GPU check; its kit carries a stand-in for "
           "PyAV (benchmarks/gpu_kit_av), not the av wheel: install av to use them")


class NotInGPUKit(ImportError):
    pass


class StandIn:
    """A class ComfyUI names at import; making one raises."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotInGPUKit(MESSAGE.format(name=f"av: {type(self).__name__}"))


def __getattr__(name: str) -> object:
    if name.startswith("__"):  # the import system's and inspect's look-ups: plain absence
        raise AttributeError(name)
    raise NotInGPUKit(MESSAGE.format(name=f"av.{name}"))
