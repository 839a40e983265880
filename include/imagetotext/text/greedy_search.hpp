// Greedy decoding, generic over a model's decode step: the token with the highest logit each step (the first
// such, as torch.argmax and transformers' generate(do_sample=False) pick it), until an end token or
// max_new_tokens. The end token itself is kept, as transformers keeps it.
//
// A model provides the logits after its prompt and a way to run the next steps; how it caches keys and values
// and where it picks tokens (on the host, or on the device inside a CUDA graph) is its own business. Several
// sequences (rows) decode together as transformers decodes a batch: each row picks its own tokens, a row that
// generated an end token is finished (transformers then feeds and emits pad_token_id for it), and the search
// stops when every row has finished or at max_new_tokens.
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
  std::int64_t pad_token_id = 0;            // the token a finished row is fed while other rows go on
};

struct GreedySearchResult {
  std::vector<std::int64_t> tokens;  // the generated tokens, the end token included
  std::vector<at::Tensor> logits;    // with keep_logits: the logits each token was chosen from
  bool stopped_on_eos = false;
};

// `first_logits`: [rows, vocab] after the prompts ([vocab] for one row). `advance(previous, n, logits)` runs n
// more decode steps of every row, the first on `previous` (the token each row chose last, pad_token_id for a
// finished row) and each later one on the tokens the step before it chose, appends each step's logits
// ([rows, vocab] or, for one row, [vocab]) to `logits` when that is not null, and returns the n * rows tokens
// chosen, step by step. Rows do not interact, so what a finished row picks is simply not reported: row r's
// result ends with its end token (transformers pads it with pad_token_id to the longest row).
// The host looks for end tokens only between runs of `lookahead` steps, so a model whose steps pick their own
// tokens on the device (a replayed CUDA graph) need not wait for each; up to lookahead - 1 steps past the last
// end token are computed and dropped, and the result is the same for any lookahead.
template <class Advance>
std::vector<GreedySearchResult> greedy_search_rows(const at::Tensor& first_logits, Advance&& advance,
                                                   const GreedySearchOptions& options, std::int64_t lookahead = 1) {
  const std::int64_t rows = first_logits.dim() <= 1 ? 1 : first_logits.size(0);
  std::vector<GreedySearchResult> results(static_cast<std::size_t>(rows));
  if (options.max_new_tokens <= 0) return results;
  const at::Tensor flat = first_logits.reshape({rows, -1});
  std::vector<at::Tensor> step_logits;
  if (options.keep_logits) step_logits.push_back(flat);
  const auto& eos = options.eos_token_ids;
  std::vector<std::int64_t> previous(static_cast<std::size_t>(rows));
  std::vector<bool> finished(static_cast<std::size_t>(rows), false);
  std::int64_t steps = 0, open = rows;
  // One step's tokens of every row; whether another step is needed.
  auto accept = [&](const std::int64_t* tokens) {
    ++steps;
    for (std::size_t r = 0; r < results.size(); ++r) {
      if (finished[r]) continue;
      results[r].tokens.push_back(tokens[r]);
      previous[r] = tokens[r];
      if (std::find(eos.begin(), eos.end(), tokens[r]) != eos.end()) {
        results[r].stopped_on_eos = finished[r] = true;
        previous[r] = options.pad_token_id;
        --open;
      }
    }
    return open > 0 && steps < options.max_new_tokens;
  };
  const at::Tensor first = flat.argmax(-1).cpu().contiguous();
  for (bool more = accept(first.template data_ptr<std::int64_t>()); more;) {
    const std::int64_t n = std::min(std::max<std::int64_t>(lookahead, 1), options.max_new_tokens - steps);
    const std::vector<std::int64_t> picked = advance(previous, n, options.keep_logits ? &step_logits : nullptr);
    for (std::int64_t i = 0; i < n && more; ++i) more = accept(picked.data() + i * rows);
  }
  if (options.keep_logits) {
    for (std::size_t r = 0; r < results.size(); ++r) {
      for (std::size_t s = 0; s < results[r].tokens.size(); ++s) {
        results[r].logits.push_back(step_logits[s].reshape({rows, -1}).select(0, static_cast<std::int64_t>(r)));
      }
    }
  }
  return results;
}

// One sequence: `advance(previous, n, logits)` takes the one token chosen last.
template <class Advance>
GreedySearchResult greedy_search(const at::Tensor& first_logits, Advance&& advance, const GreedySearchOptions& options,
                                 std::int64_t lookahead = 1) {
  auto one_row = [&](const std::vector<std::int64_t>& previous, std::int64_t n, std::vector<at::Tensor>* logits) {
    return advance(previous.front(), n, logits);
  };
  return std::move(greedy_search_rows(first_logits.reshape({1, -1}), one_row, options, lookahead).front());
}

}  // namespace imagetotext::text
