"""Florence-2-base at full size on the CPU (fp32, random weights with the exact config): encoder output and
logits against transformers, and the service's 3-beam search against generate(). A sanity run for machines
without a GPU; timings on a shared 2-core machine are indicative only. Usage: PYTHONPATH=python python ..."""
import sys, tempfile, time
from pathlib import Path

import torch
import transformers

DIRECTORY = Path(tempfile.mkdtemp())
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from test_florence2_gpu import BASE, PROMPT
from imagetotext import _C
torch.manual_seed(0)
cfg = transformers.Florence2Config(**BASE, image_token_id=51289)
m = transformers.Florence2ForConditionalGeneration(cfg).eval()
m.save_pretrained(str(DIRECTORY))
pv = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1))
ids = torch.tensor([[51289] * 577 + PROMPT]); dec = torch.tensor([[2, 0, 100, 200, 300]])
t = time.time()
with torch.no_grad(): out = m(input_ids=ids, pixel_values=pv, decoder_input_ids=dec)
print("transformers fp32 forward", time.time() - t)
ours = _C.Florence2Model.load(str(DIRECTORY))
t = time.time(); enc = ours.encode(pv, ids[:, 577:]); print("ours encode", time.time() - t)
lg = ours.decoder_logits(enc, dec)
print("enc rel", ((enc - out.encoder_last_hidden_state).abs().max() / out.encoder_last_hidden_state.abs().max()).item())
print("logit rel", ((lg - out.logits).abs().max() / out.logits.abs().max()).item())
t = time.time(); toks, score = ours.generate_as_service(enc, max_new_tokens=16); print("ours 3-beam 16 tokens", time.time() - t, toks, score)
t = time.time()
with torch.no_grad():
    g = m.generate(input_ids=ids, pixel_values=pv, max_new_tokens=16, num_beams=3, no_repeat_ngram_size=3, forced_bos_token_id=0, forced_eos_token_id=2, early_stopping=True, do_sample=False, return_dict_in_generate=True, output_scores=True)
print("transformers 3-beam 16 tokens (incl. encode)", time.time() - t, g.sequences[0].tolist(), g.sequences_scores[0].item())
