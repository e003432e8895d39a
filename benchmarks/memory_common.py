"""What both runners of benchmarks/memory.py share: the process's memory, a timeline of events,
and the reference scheduler's settings."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
LATENT_SCALE = 0.18215  # SD2's VAE scaling factor
PROMPTS = (  # (retrieval text, seed) of the first and the second (warm) prompt
    ("a red striped short-sleeve top", 42),
    ("a blue denim jacket with buttons", 43),
)
SCHEDULER = dict(  # stable-diffusion-2-inpainting's scheduler, as the reference loads it
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False,
    prediction_type="epsilon",
)


def proc_memory() -> dict[str, int]:
    """This process's resident memory now and at its peak (bytes), from /proc (Linux).

    VmHWM is the peak of VmRSS: anonymous memory plus the file pages mapped in (memory-mapped
    weights count once touched), which is what the kernel must find room for."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class Timeline:
    """Events with their time and the process's memory at that moment."""

    start: float = field(default_factory=time.perf_counter)
    events: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, what: str, **data: Any) -> dict[str, Any]:
        # cpu: this process's CPU seconds (all threads), which other jobs on a shared machine
        # disturb far less than wall seconds.
        mem = proc_memory()
        event = {"what": what, "t": time.perf_counter() - self.start, "cpu": time.process_time(),
                 "rss": mem.get("VmRSS", 0), "peak": mem.get("VmHWM", 0), "rss_file": mem.get("RssFile", 0),
                 "load": Path("/proc/loadavg").read_text().split()[0], **data}
        self.events.append(event)
        return event


def step_seconds(step_times: list[float]) -> float:
    """Seconds per denoising step from the times (wall or CPU) each step ended: the mean
    interval after the first step (whose interval would include the sampler's set-up)."""
    if len(step_times) >= 2:
        return (step_times[-1] - step_times[0]) / (len(step_times) - 1)
    return float("nan")


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=1, default=str))
