"""The independent side of benchmarks/memory.py: Fashion-RAG in diffusers/transformers.

    python benchmarks/memory_reference.py SPEC.json

Written from the method (docs/method.md), sharing no code with the pack: transformers'
CLIPVisionModel (ViT-H/14) -> the adapter built from transformers' CLIP encoder layer ->
transformers' 23-layer CLIPTextModel with the pseudo-words as the input token embeddings of
the `$` positions; diffusers' 27-channel UNet2DConditionModel, AutoencoderKL and DDIMScheduler
(CFG 7.5, zero pose in the unconditional branch). Models load the way a careful diffusers user
loads them: `from_pretrained` (meta device + the weights assigned, no second copy) for the
diffusers/transformers folders, and the `.pth` files (the reference's own format) read whole with
`torch.load` and assigned to a model built on the meta device. The non-model inputs (garment
pixels, person, mask, pose, category) are the ones the pack's run used (its tensors.safetensors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from memory_common import LATENT_SCALE, SCHEDULER, Timeline, write_json  # noqa: E402

NOUNS = {"dresses": "a dress", "upper_body": "an upper body garment", "lower_body": "a lower body garment"}
PLACEHOLDER_ID = 259  # "$" in the CLIP BPE vocabulary, as the reference hard-codes


class Adapter(nn.Module):
    """The reference's inversion adapter, from transformers' CLIP encoder layer."""

    def __init__(self, width: int, heads: int, mlp: int, hidden: int, out: int, tokens: int) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        cfg = CLIPVisionConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=mlp,
                               hidden_act="gelu", layer_norm_eps=1e-5)
        cfg._attn_implementation = "sdpa"  # set by from_pretrained for whole models; here by hand
        self.tokens = tokens
        self.encoder_layers = nn.ModuleList([CLIPEncoderLayer(cfg)])
        self.post_layernorm = nn.LayerNorm(width, eps=1e-5)
        self.layers = nn.Sequential(  # indices 0/3/6 hold the Linear layers, as in the reference
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Dropout(0.5), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder_layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        x = self.layers(self.post_layernorm(x[:, 0, :]))
        return x.view(x.shape[0], self.tokens, -1)


def load_pth(path: str, build: Any) -> nn.Module:
    """A plain state dict file into a model built on the meta device (its tensors assigned)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = build()
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_models(spec: dict[str, Any], tl: Timeline, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The models in `dtype` on `device` (benchmarks/gpu_check.py: fp16 on a GPU, as the reference runs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    ref, m = Path(spec["reference"]), {}
    tl.mark("load", model="text encoder + tokenizer")
    m["text"] = CLIPTextModel.from_pretrained(ref / "text_encoder", dtype=dtype).eval()
    m["tokenizer"] = CLIPTokenizer.from_pretrained(spec["tokenizer"], pad_token="!")  # SD2 pads with id 0
    tl.mark("load", model="VAE")
    m["vae"] = AutoencoderKL.from_pretrained(ref / "vae", torch_dtype=dtype).eval()
    tl.mark("load", model="vision")
    m["vision"] = CLIPVisionModel.from_pretrained(ref / "clip_vision", dtype=dtype).eval()
    tl.mark("load", model="adapter")
    a = spec["adapter_config"]
    m["adapter"] = load_pth(spec["adapter_pth"], lambda: Adapter(
        a["vision_width"], a["heads"], a["mlp_dim"], a["hidden_dim"], a["num_tokens"] * a["text_width"],
        a["num_tokens"]))
    tl.mark("load", model="UNet")
    config = {k: v for k, v in json.loads((ref / "unet_config.json").read_text()).items() if k[0] != "_"}
    m["unet"] = load_pth(spec["unet_pth"], lambda: UNet2DConditionModel(**config))
    for name in ("text", "vae", "vision", "adapter", "unet"):
        m[name] = m[name].to(device=device, dtype=dtype)
    synchronize(device)
    tl.mark("loaded")
    return m


def synchronize(device: str | torch.device) -> None:
    """Wait for the GPU's queued work, so that a time taken now includes it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _like(model: nn.Module) -> dict[str, Any]:
    p = next(model.parameters())
    return {"device": p.device, "dtype": p.dtype}


@torch.no_grad()
def conditioning(m: dict[str, Any], garments: torch.Tensor, category: str) -> tuple[torch.Tensor, ...]:
    """(positive, negative) [1, 77, width]: the prompt with the pseudo-words, and the empty prompt."""
    from transformers import CLIPImageProcessorPil

    pixels_u8 = (garments * 255).round().to(torch.uint8).numpy()  # the garment files' own pixels
    pixels = CLIPImageProcessorPil()(images=list(pixels_u8), return_tensors="pt").pixel_values
    # last_hidden_state: before post_layernorm
    feats = m["vision"](pixel_values=pixels.to(**_like(m["vision"]))).last_hidden_state
    ptes = m["adapter"](feats.to(**_like(m["adapter"]))).reshape(-1, m["text"].config.hidden_size)
    prompt = f"a photo of a model wearing {NOUNS[category]} made of " + " $ " * ptes.shape[0]

    def encode(text: str, words: torch.Tensor | None) -> torch.Tensor:
        ids = m["tokenizer"](text, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(_like(m["text"])["device"])

        def inject(_module: nn.Module, _inputs: Any, embeds: torch.Tensor) -> torch.Tensor:
            if words is None:
                return embeds
            embeds = embeds.clone()
            embeds[0, (ids[0] == PLACEHOLDER_ID).nonzero()[:, 0]] = words.to(embeds.dtype)
            return embeds

        hook = m["text"].embeddings.token_embedding.register_forward_hook(inject)
        try:
            return m["text"](input_ids=ids).last_hidden_state
        finally:
            hook.remove()

    return encode(prompt, ptes), encode("", None)


@torch.no_grad()
def inpaint(m: dict[str, Any], t: dict[str, torch.Tensor], pos: torch.Tensor, neg: torch.Tensor,
            steps: int, seed: int, tl: Timeline, cfg: float = 7.5) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHEDULER)
    like = _like(m["unet"])
    sched.set_timesteps(steps, device=like["device"])
    image, mask, pose = (t[k].to(**like) for k in ("person", "mask", "pose"))
    mk = (mask.reshape(1, 1, *mask.shape[-2:]) >= 0.5).to(like["dtype"])
    pixels = image[..., :3].movedim(-1, 1) * 2 - 1
    h, w = pixels.shape[-2] // 8, pixels.shape[-1] // 8
    # The reference samples the posterior; ComfyUI's VAE encode (the pack) takes its mode.
    masked = m["vae"].encode(pixels * (mk < 0.5)).latent_dist.mode() * LATENT_SCALE
    extra = torch.cat([torch.cat([F.interpolate(mk, size=(h, w))] * 2), torch.cat([masked] * 2),
                       torch.cat([torch.zeros(1, pose.shape[1], h, w, **like),
                                  F.interpolate(pose, size=(h, w), mode="bilinear")])], 1)
    context = torch.cat([neg, pos]).to(**like)
    # ComfyUI's noise: drawn on the CPU in fp32 from the seed
    x = (torch.randn(1, 4, h, w, generator=torch.manual_seed(seed)) * sched.init_noise_sigma).to(**like)
    tl.mark("sampling")
    for i, step in enumerate(sched.timesteps):
        inp = torch.cat([sched.scale_model_input(torch.cat([x] * 2), step), extra], 1)
        eps_u, eps_c = m["unet"](inp, step, encoder_hidden_states=context).sample.chunk(2)
        x = sched.step(eps_u + cfg * (eps_c - eps_u), step, x).prev_sample
        synchronize(like["device"])
        tl.mark("step", value=i + 1)
    decoded = (m["vae"].decode(x / LATENT_SCALE).sample / 2 + 0.5).clamp(0, 1).movedim(1, -1)
    return x, decoded


def main() -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    spec = json.loads(Path(sys.argv[1]).read_text())
    tl = Timeline()
    torch.manual_seed(0)
    import diffusers  # noqa: F401  (imports are not model loading: timed apart)
    import transformers  # noqa: F401

    tl.mark("ready")
    with safe_open(spec["tensors"], framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        category = f.metadata()["category"]
    models = load_models(spec, tl)
    tl.mark("inversion")
    pos, neg = conditioning(models, tensors["garments"], category)
    tl.mark("inpaint")
    latent, image = inpaint(models, tensors, pos, neg, spec["steps"], spec["seed"], tl)
    tl.mark("done")
    save_file({"latent": latent.contiguous(), "image": image.contiguous()},
              str(Path(spec["out"]) / "reference.safetensors"))
    write_json(Path(spec["out"]) / "result.json", {"events": tl.events})


if __name__ == "__main__":
    main()
