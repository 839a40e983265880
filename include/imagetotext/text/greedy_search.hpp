// Greedy decoding, generic over a model's decode step: the token with the highest logit each step (the first
// such, as torch.argmax and transformers' generate(do_sample=False) pick it), until an end token or
// max_new_tokens. The end token itself is kept, as transformers keeps it.
//
// A model provides the logits after its prompt and a way to run the next steps; how it caches keys and values
// and where it picks tokens (on the host, or on the device inside a CUDA graph) is its own business.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace imagetotext::text {

struct GreedySearchOptions {
  std::int64_t max_new_tokens = 20;
  std::vector<std::int64_t> eos_token_ids;  // stop after generating any of these
  bool keep_logits = false;                 // return every step's logits (tests compare them)
};

struct GreedySearchResult {
  std::vector<std::int64_t> tokens;  // the generated tokens, the end token included
  std::vector<at::Tensor> logits;    // with keep_logits: the logits each token was chosen from
  bool stopped_on_eos = false;
};

// `first_logits`: [vocab] (or [1, vocab]) after the prompt. `advance(previous, n, logits)` runs n more decode
// steps, the first on `previous` (the token chosen last) and each later one on the token the step before it
// chose, appends each step's logits [vocab] to `logits` when that is not null, and returns the n tokens chosen.
// The host looks for an end token only between runs of `lookahead` steps, so a model whose steps pick their own
// tokens on the device (a replayed CUDA graph) need not wait for each; up to lookahead - 1 steps past an end
// token are computed and dropped, and the result is the same for any lookahead.
template <class Advance>
GreedySearchResult greedy_search(const at::Tensor& first_logits, Advance&& advance, const GreedySearchOptions& options,
                                 std::int64_t lookahead = 1) {
  GreedySearchResult result;
  if (options.max_new_tokens <= 0) return result;
  const at::Tensor flat = first_logits.reshape({-1});
  if (options.keep_logits) result.logits.push_back(flat);
  const auto& eos = options.eos_token_ids;
  auto accept = [&](std::int64_t token) {
    result.tokens.push_back(token);
    result.stopped_on_eos = std::find(eos.begin(), eos.end(), token) != eos.end();
    return !result.stopped_on_eos && static_cast<std::int64_t>(result.tokens.size()) < options.max_new_tokens;
  };
  for (bool more = accept(flat.argmax().template item<std::int64_t>()); more;) {
    const std::int64_t left = options.max_new_tokens - static_cast<std::int64_t>(result.tokens.size());
    const std::int64_t previous = result.tokens.back();
    for (const std::int64_t token : advance(previous, std::min(std::max<std::int64_t>(lookahead, 1), left),
                                            options.keep_logits ? &result.logits : nullptr)) {
      if (!(more = accept(token))) break;
    }
  }
  if (options.keep_logits) result.logits.resize(result.tokens.size());
  return result;
}

}  // namespace imagetotext::text
