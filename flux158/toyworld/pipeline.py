"""`ToyWorldPipeline`: FLUX-style flow-matching sampling for the pixel-space toy model, with FluxPipeline's call API.

It mirrors `FluxPipeline`'s schedule (sigmas linspace(1, 1/n), resolution-shifted by `mu`, stock
`FlowMatchEulerDiscreteScheduler`) and takes the same keyword arguments, so the generate stage and the quantization
code treat both alike. The toy model has no guidance embedding; `guidance_scale > 1` runs classifier-free guidance
against the empty caption it was trained with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, ImagePipelineOutput
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from flux158.errors import ModelUnavailableError
from flux158.toyworld.model import image_ids, pack, unpack


@dataclass(frozen=True)
class ToyWorldSource:
    """Where a trained toy-world pipeline lives; `None` means the model committed with this package."""

    path: str | None = None

    def resolve(self) -> Path:
        path = Path(self.path).expanduser() if self.path else Path(__file__).parent / "weights"
        if not (path / "model_index.json").exists():
            raise ModelUnavailableError(
                f"no toy-world model at {path}: train one with `python run.py experiment=toyworld_train` and pass "
                "model.pretrained=<its outputs/toyworld_train/<hash>/model directory>"
            )
        return path

    def fingerprint(self) -> str:
        """sha256 over the weight files, so artifacts made with different weights never share a directory."""
        h = hashlib.sha256()
        for f in sorted(self.resolve().rglob("*.safetensors")):
            h.update(f.relative_to(self.resolve()).as_posix().encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]


def make_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler settings (dynamic shifting; `mu` follows the token count as in FluxPipeline)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


class ToyWorldPipeline(DiffusionPipeline):
    """Text-to-image for toy-world scenes; components save and load with `save_pretrained`/`from_pretrained`."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer: FluxTransformer2DModel, text_encoder: T5EncoderModel,
                 tokenizer: PreTrainedTokenizerFast, scheduler: FlowMatchEulerDiscreteScheduler,
                 image_size: int = 32, patch: int = 4) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
        self.register_to_config(image_size=image_size, patch=patch)

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states (B, L, D), pooled (B, D) = masked mean of the token states)."""
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].to(states.dtype)
        return states, (states * m).sum(1) / m.sum(1)

    def predict_velocity(self, tokens: torch.Tensor, sigma: torch.Tensor, states: torch.Tensor,
                         pooled: torch.Tensor) -> torch.Tensor:
        """The transformer's flow-matching velocity at noise level `sigma` (B,) in [0, 1]."""
        h = w = self.config.image_size
        return self.transformer(
            hidden_states=tokens, timestep=sigma.to(tokens.dtype), pooled_projections=pooled.to(tokens.dtype),
            encoder_hidden_states=states.to(tokens.dtype),
            txt_ids=torch.zeros(states.shape[1], 3, device=tokens.device),
            img_ids=image_ids(h, w, self.config.patch).to(tokens.device), guidance=None, return_dict=False,
        )[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 1.0, height: int | None = None, width: int | None = None,
                 max_sequence_length: int | None = None, output_type: str = "pil") -> ImagePipelineOutput:
        """Sample images. `max_sequence_length` is accepted for FluxPipeline compatibility and ignored."""
        size = self.config.image_size
        if (height or size) != size or (width or size) != size:
            raise ValueError(f"this toy model makes {size}x{size} images, not {height}x{width}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        b, dtype = len(prompts), self.transformer.dtype
        states, pooled = self.encode_prompt(prompts)
        cfg = guidance_scale > 1.0
        if cfg:
            null_states, null_pooled = self.encode_prompt([""] * b)
            states, pooled = torch.cat([null_states, states]), torch.cat([null_pooled, pooled])
        noise = randn_tensor((b, 3, size, size), generator=generator, device=self.device, dtype=dtype)
        latents = pack(noise, self.config.patch)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(latents.shape[1], self.scheduler.config.base_image_seq_len,
                             self.scheduler.config.max_image_seq_len, self.scheduler.config.base_shift,
                             self.scheduler.config.max_shift)
        self.scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents, latents]) if cfg else latents
            v = self.predict_velocity(x, (t / 1000).expand(x.shape[0]), states, pooled)
            if cfg:
                v_null, v_text = v.chunk(2)
                v = v_null + guidance_scale * (v_text - v_null)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
        images = unpack(latents, size, size, self.config.patch).clamp(-1, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=images)
        arrays = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return ImagePipelineOutput(images=[Image.fromarray(a) for a in arrays])
