"""Tiny, randomly initialised diffusers pipelines of the SDXL, SD3 and Flux families, built offline,
and an SDXL refiner (an image-to-image pipeline, as stabilityai/stable-diffusion-xl-refiner-1.0 is).

They exercise exactly the code path real checkpoints take (same pipeline classes, same
components, saved with ``save_pretrained`` as safetensors) and render on a CPU in well
under a second. The tests build them; the SD family's is the trained demo model
(``diffdeck.engines.demo``). Worker side: imports torch.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

_TEXT_DIM = 32
_VOCAB_SIZE = 1000


def clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: every printable character is a token."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5TokenizerFast:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in string.ascii_lowercase + string.digits]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=32)


def _clip_config(**extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=_TEXT_DIM,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=_VOCAB_SIZE, hidden_act="gelu", **extra,
    )


def _t5() -> T5EncoderModel:
    config = T5Config(
        vocab_size=_VOCAB_SIZE, d_model=_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, flow: bool) -> AutoencoderKL:
    extra = {"shift_factor": 0.0609, "scaling_factor": 1.5035} if flow else {}
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
        **({"use_quant_conv": False, "use_post_quant_conv": False} if flow else {}), **extra,
    )


def _unet(cross_dim: int, in_channels: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
        in_channels=in_channels, out_channels=in_channels, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=8, **extra,
    )


def _sdxl(latent_channels: int = 4):
    unet = _unet(
        2 * _TEXT_DIM, latent_channels, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=_TEXT_DIM + 6 * 8,
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=_vae(latent_channels, flow=False), text_encoder=CLIPTextModel(_clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=_TEXT_DIM)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1),
    )


def _sdxl_refiner(latent_channels: int = 4):
    """As the real refiner is: the second text encoder only (the UNet cross-attends to its width),
    and an aesthetic score among the time ids (5 of them, not the base's 6)."""
    unet = _unet(
        _TEXT_DIM, latent_channels, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=_TEXT_DIM + 5 * 8,
    )
    return StableDiffusionXLImg2ImgPipeline(
        unet=unet, vae=_vae(latent_channels, flow=False), text_encoder=None, tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=_TEXT_DIM)),
        tokenizer_2=clip_tokenizer(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1),
    )


def _sd3(latent_channels: int = 16):
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=latent_channels, out_channels=latent_channels, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=_TEXT_DIM, pooled_projection_dim=2 * _TEXT_DIM,
    )
    clip = _clip_config(projection_dim=_TEXT_DIM)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=_vae(latent_channels, flow=True),
        text_encoder=CLIPTextModelWithProjection(clip), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(), tokenizer_3=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _flux(latent_channels: int = 16):
    transformer = FluxTransformer2DModel(  # latents are packed in 2x2 patches
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_TEXT_DIM, pooled_projection_dim=_TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
    )
    return FluxPipeline(
        transformer=transformer, vae=_vae(latent_channels, flow=True),
        text_encoder=CLIPTextModel(_clip_config()), tokenizer=clip_tokenizer(),
        text_encoder_2=_t5(), tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
    )


_BUILDERS = {"sdxl": _sdxl, "sdxl-refiner": _sdxl_refiner, "sd3": _sd3, "flux": _flux}


def build(family: str, seed: int = 0, latent_channels: int | None = None):
    """A tiny pipeline of ``family`` (or ``sdxl-refiner``) whose random weights depend only on ``seed``; its VAE has
    the family's usual number of latent channels unless ``latent_channels`` says otherwise."""
    torch.manual_seed(seed)
    pipe = _BUILDERS[family](**({"latent_channels": latent_channels} if latent_channels else {}))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def save(family: str, folder: Path, seed: int = 0, latent_channels: int | None = None) -> Path:
    build(family, seed, latent_channels).save_pretrained(folder, safe_serialization=True)
    return folder


def save_lora(unet_folder: Path, path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA for the UNet saved in `unet_folder`, with random (nonzero) weights that change what
    the model draws, written as diffusers writes one: `path`, a .safetensors file."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path
