"""Florence-2 at full size on a GPU (marker gpu; skipped without CUDA): random checkpoints with the exact
Florence-2-base and -large configs (shared/reference/vlm_models.md, B.1), fp32 logit parity with
transformers on CUDA, and bf16 / NF4 generation with the service's settings. Timings: benchmarks/bench_florence2.py."""

from __future__ import annotations

import pytest
import torch

from imagetotext import _C

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.gpu

BASE = dict(
    vision_config=dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                       num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768, drop_path_rate=0.0),
    text_config=dict(vocab_size=51328, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                     decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                     max_position_embeddings=1024),
)
LARGE = dict(
    vision_config=dict(depths=[1, 1, 9, 1], embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                       num_groups=[8, 16, 32, 64], window_size=12, projection_dim=1024, drop_path_rate=0.0),
    text_config=dict(vocab_size=51328, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                     decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                     max_position_embeddings=4096),
)
PROMPT = [0, 47066, 21700, 11, 4617, 99, 16, 2343, 11, 5, 2274, 4, 2]  # <DETAILED_CAPTION>


@pytest.fixture(scope="module", params=["base", "large"])
def full_size(request, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Florence2Config(**(BASE if request.param == "base" else LARGE), image_token_id=51289)
    model = transformers.Florence2ForConditionalGeneration(config).eval()
    directory = tmp_path_factory.mktemp(f"florence2-{request.param}")
    model.save_pretrained(directory)
    return model.to("cuda"), directory


def test_fp32_logits_match_transformers_on_cuda(full_size):
    model, directory = full_size
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
    input_ids = torch.tensor([[51289] * 577 + PROMPT], device="cuda")
    decoder_ids = torch.tensor([[2, 0, 100, 200, 300]], device="cuda")
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, decoder_input_ids=decoder_ids)
    ours = _C.Florence2Model.load(directory, device="cuda", dtype="float32")
    encoded = ours.encode(pixel_values, input_ids[:, 577:])
    logits = ours.decoder_logits(encoded, decoder_ids)
    scale = out.logits.abs().max()
    # TF32 is off in both (torch's default for matmul); the bound allows the attention kernels' order.
    assert ((encoded - out.encoder_last_hidden_state).abs().max() / out.encoder_last_hidden_state.abs().max()) < 1e-3
    assert ((logits - out.logits).abs().max() / scale) < 1e-3


@pytest.mark.parametrize("quantization,quantize_vision", [("none", False), ("nf4", False), ("nf4", True)])
def test_bf16_and_nf4_generate_with_the_service_settings(full_size, quantization, quantize_vision):
    _, directory = full_size
    ours = _C.Florence2Model.load(directory, device="cuda", dtype="bfloat16", quantization=quantization,
                                  quantize_vision=quantize_vision)
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
    encoded = ours.encode(pixel_values, torch.tensor([PROMPT]))
    tokens, score = ours.generate_as_service(encoded, max_new_tokens=16)
    assert tokens[:2] == [2, 0] and 2 < len(tokens) <= 17 and score < 0
