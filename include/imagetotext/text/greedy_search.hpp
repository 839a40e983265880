// Greedy decoding, generic over a model's decode step: the token with the highest logit each step (the first
// such, as torch.argmax and transformers' generate(do_sample=False) pick it), until an end token or
// max_new_tokens. The end token itself is kept, as transformers keeps it.
//
// A model provides the logits after its prompt and `step(token) -> logits` for the next position; how it
// caches keys and values is its own business (a cache allocated once per request at its final size keeps the
// step free of allocation).
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

// `logits`: [vocab] (or [1, vocab]) after the prompt. `step(std::int64_t token) -> at::Tensor` runs the model on
// the token just chosen and returns the next logits. step is not called after the last token.
template <class Step>
GreedySearchResult greedy_search(at::Tensor logits, Step&& step, const GreedySearchOptions& options) {
  GreedySearchResult result;
  result.tokens.reserve(static_cast<std::size_t>(std::max<std::int64_t>(options.max_new_tokens, 0)));
  for (std::int64_t i = 0; i < options.max_new_tokens; ++i) {
    const at::Tensor flat = logits.reshape({-1});
    if (options.keep_logits) result.logits.push_back(flat);
    const std::int64_t token = flat.argmax().template item<std::int64_t>();
    result.tokens.push_back(token);
    const auto& eos = options.eos_token_ids;
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
      result.stopped_on_eos = true;
      break;
    }
    if (i + 1 < options.max_new_tokens) logits = step(token);
  }
  return result;
}

// Greedy decoding whose steps pick their own tokens on the device (argmax inside a replayed CUDA graph), so
// the host waits only between runs of steps: `advance(n)` runs n more steps, each on the token the one before
// chose, and returns the n tokens chosen. Up to `lookahead - 1` steps past an end token are computed and
// dropped; the result is the one greedy_search gives.
template <class Advance>
GreedySearchResult greedy_search_ahead(std::int64_t first_token, Advance&& advance, const GreedySearchOptions& options,
                                       std::int64_t lookahead = 4) {
  GreedySearchResult result;
  const auto& eos = options.eos_token_ids;
  auto accept = [&](std::int64_t token) {
    result.tokens.push_back(token);
    result.stopped_on_eos = std::find(eos.begin(), eos.end(), token) != eos.end();
    return !result.stopped_on_eos && static_cast<std::int64_t>(result.tokens.size()) < options.max_new_tokens;
  };
  if (options.max_new_tokens <= 0 || !accept(first_token)) return result;
  for (bool more = true; more;) {
    const std::int64_t left = options.max_new_tokens - static_cast<std::int64_t>(result.tokens.size());
    for (const std::int64_t token : advance(std::min(std::max<std::int64_t>(lookahead, 1), left))) {
      if (!(more = accept(token))) break;
    }
  }
  return result;
}

}  // namespace imagetotext::text
