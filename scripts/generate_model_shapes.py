"""Writes python/imagetotext/model_shapes/: for each registered checkpoint, the config.json and the name, dtype
and shape of every tensor its model.safetensors holds, so `imagetotext models` can compute each variant's weight
memory without the checkpoint (our weight_memory builds our model from these shapes on the meta device).

The shapes come from the oracle, not from hand-written numbers: transformers builds each model from its
config on the meta device (no memory, a few seconds) and the state dict is reduced exactly as save_pretrained
reduces it (tied weights stored once). The configs are the hub checkpoints' values in
shared/reference/vlm_models.md (A.1, B.1). moondream2 has no transformers class (its hub code is remote code):
its modules are built here the way its own code builds them (vikhyat/moondream@8ac77eb moondream/torch/
vision.py, text.py, region.py: shared/reference/moondream2.md section 5), from its config dataclass defaults.

    python scripts/generate_model_shapes.py [OUTDIR]     (default: python/imagetotext/model_shapes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers.modeling_utils import remove_tied_weights_from_state_dict

# safetensors' dtype names.
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
               torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def smolvlm_config(text: dict) -> transformers.Idefics3Config:
    """SmolVLM v1 (Idefics3) with every field of vlm_models.md A.1 explicit (the class defaults are Idefics3-8B's)."""
    return transformers.Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=49280, head_dim=64, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, pad_token_id=2, tie_word_embeddings=False,
                         **text),
        vision_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           patch_size=16, image_size=512, num_channels=3),
        scale_factor=4, image_token_id=49190, vocab_size=49280, tie_word_embeddings=False)


def florence2_config(vision: dict, text: dict) -> transformers.Florence2Config:
    """Florence-2 (vlm_models.md B.1) with the vocabulary of microsoft/Florence-2-*'s config (51289 rows)."""
    return transformers.Florence2Config(
        vision_config=dict(depths=[1, 1, 9, 1], window_size=12, drop_path_rate=0.0, **vision),
        text_config={"vocab_size": 51289, "max_position_embeddings": 1024, **text}, image_token_id=51289)


FLORENCE2_BASE = dict(vision=dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                                  projection_dim=768),
                      text=dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072))
FLORENCE2_LARGE = dict(vision=dict(embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                                   num_groups=[8, 16, 32, 64], projection_dim=1024),
                       text=dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                                 decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                                 max_position_embeddings=4096))

# Checkpoint (hub id) -> its config, as transformers builds it.
CHECKPOINTS = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": lambda: smolvlm_config(dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)),
    "HuggingFaceTB/SmolVLM-500M-Instruct": lambda: smolvlm_config(dict(
        hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560)),
    "microsoft/Florence-2-base": lambda: florence2_config(**FLORENCE2_BASE),
    "microsoft/Florence-2-large": lambda: florence2_config(**FLORENCE2_LARGE),
}


def transformers_tensors(config: transformers.PretrainedConfig) -> dict[str, dict]:
    """name -> {dtype, shape} of the tensors save_pretrained writes for a model of this config."""
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    state_dict = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return {name: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for name, t in sorted(state_dict.items())}


# ---------------------------------------------------------------------------------------------------------
# moondream2 (revision 2025-01-09): its modules as moondream/torch builds them, from its config dataclasses.
# ---------------------------------------------------------------------------------------------------------

MOONDREAM2_CONFIG = dict(
    text=dict(dim=2048, n_layers=24, vocab_size=51200),
    vision=dict(enc_dim=1152, enc_patch_size=14, enc_n_layers=27, enc_ff_dim=4304, proj_out_dim=2048, crop_size=378,
                in_channels=3, proj_inner_dim=8192),
    region=dict(dim=2048, coord_feat_dim=256, coord_out_dim=1024, size_feat_dim=512, size_out_dim=2048,
                inner_dim=8192))


def moondream2_module(text: dict, vision: dict, region: dict, dtype=torch.float16) -> torch.nn.Module:
    """build_vision_model + build_text_model + the region model of moondream/torch (fp16, as hf_release.py saves)."""
    nn = torch.nn

    def mlp(dim, inner, out=None):
        return nn.ModuleDict(dict(fc1=nn.Linear(dim, inner), fc2=nn.Linear(inner, out or dim)))

    v, t, r = vision, text, region
    patches = (v["crop_size"] // v["enc_patch_size"]) ** 2
    patch_dim = v["in_channels"] * v["enc_patch_size"] ** 2
    with torch.device("meta"):
        vision_model = nn.ModuleDict(dict(
            patch_emb=nn.Linear(patch_dim, v["enc_dim"]),
            blocks=nn.ModuleList(nn.ModuleDict(dict(
                ln1=nn.LayerNorm(v["enc_dim"]),
                attn=nn.ModuleDict(dict(qkv=nn.Linear(v["enc_dim"], 3 * v["enc_dim"]),
                                        proj=nn.Linear(v["enc_dim"], v["enc_dim"]))),
                ln2=nn.LayerNorm(v["enc_dim"]),
                mlp=mlp(v["enc_dim"], v["enc_ff_dim"]))) for _ in range(v["enc_n_layers"])),
            post_ln=nn.LayerNorm(v["enc_dim"]),
            proj_mlp=mlp(2 * v["enc_dim"], v["proj_inner_dim"], v["proj_out_dim"])))
        vision_model.pos_emb = nn.Parameter(torch.empty(1, patches, v["enc_dim"]))
        text_model = nn.ModuleDict(dict(
            blocks=nn.ModuleList(nn.ModuleDict(dict(
                ln=nn.LayerNorm(t["dim"]),
                attn=nn.ModuleDict(dict(qkv=nn.Linear(t["dim"], 3 * t["dim"]), proj=nn.Linear(t["dim"], t["dim"]))),
                mlp=mlp(t["dim"], 4 * t["dim"]))) for _ in range(t["n_layers"])),
            post_ln=nn.LayerNorm(t["dim"]),
            lm_head=nn.Linear(t["dim"], t["vocab_size"])))
        text_model.wte = nn.Parameter(torch.empty(t["vocab_size"], t["dim"]))
        region_model = nn.ModuleDict(dict(
            coord_encoder=nn.Linear(r["coord_feat_dim"], r["dim"]),
            coord_decoder=mlp(r["dim"], r["inner_dim"], r["coord_out_dim"]),
            size_encoder=nn.Linear(r["size_feat_dim"], r["dim"]),
            size_decoder=mlp(r["dim"], r["inner_dim"], r["size_out_dim"])))
        region_model.coord_features = nn.Parameter(torch.empty(1, r["coord_feat_dim"] // 2))
        region_model.size_features = nn.Parameter(torch.empty(2, r["size_feat_dim"] // 2))
        model = nn.Module()
        model.model = nn.ModuleDict(dict(vision=vision_model, text=text_model, region=region_model))
    return model.to(dtype)


def module_tensors(module: torch.nn.Module) -> dict[str, dict]:
    return {name: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
            for name, t in sorted(module.state_dict().items())}


def write(outdir: Path, repo_id: str, revision: str, config: dict, tensors: dict[str, dict], built_by: str) -> None:
    directory = outdir / repo_id.replace("/", "--")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    header = json.dumps({"repo_id": repo_id, "revision": revision, "built_by": built_by})[:-1]
    lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in tensors.items())
    (directory / "tensors.json").write_text(f'{header}, "tensors": {{\n{lines}\n}}}}\n')  # one tensor per line


def main(argv: list[str]) -> None:
    outdir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "python" / "imagetotext" / "model_shapes"
    for repo_id, make_config in CHECKPOINTS.items():
        config = make_config()
        write(outdir, repo_id, "main", json.loads(config.to_json_string(use_diff=False)), transformers_tensors(config),
              f"transformers {transformers.__version__} on the meta device (scripts/generate_model_shapes.py)")
    write(outdir, "vikhyatk/moondream2", "2025-01-09", {"architectures": ["HfMoondream"], "model_type": "moondream1"},
          module_tensors(moondream2_module(**MOONDREAM2_CONFIG)),
          "moondream/torch's module layout from its config defaults (scripts/generate_model_shapes.py)")
    print(f"wrote {outdir}")


if __name__ == "__main__":
    main(sys.argv[1:])
