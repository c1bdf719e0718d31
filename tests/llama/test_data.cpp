// Data: loading (JSON / JSONL, field detection, errors), template, masking, EOS, truncation,
// dropping, deterministic shuffle, disjoint covering shards, padding, exact resume.

#include <algorithm>
#include <set>

#include <doctest/doctest.h>

#include "llama/data.hpp"
#include "llama/tokenizer.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;
namespace fs = std::filesystem;

namespace {

/// Byte-level tokenizer: id = byte + 3, BOS 1, EOS 2 — makes the masking arithmetic exact.
struct ByteTokenizer {
  std::vector<std::int32_t> encode(std::string_view s, bool bos) const {
    std::vector<std::int32_t> v;
    if (bos) v.push_back(1);
    for (unsigned char ch : s) v.push_back(ch + 3);
    return v;
  }
  std::int32_t eos_id() const { return 2; }
};

fs::path write_text(const std::string& dir, const std::string& name, const std::string& text) {
  const auto p = llama_test::scratch(dir) / name;
  write_file_atomic(p, text);
  return p;
}

std::shared_ptr<std::vector<TokenizedExample>> numbered(int n) {
  auto v = std::make_shared<std::vector<TokenizedExample>>();
  for (int i = 0; i < n; ++i) {
    TokenizedExample t;
    t.input_ids.assign(2 + i % 5, 10 + i);  // length varies → padding
    t.labels = t.input_ids;
    t.labels[0] = kIgnoreIndex;
    v->push_back(t);
  }
  return v;
}

}  // namespace

TEST_CASE("data: Alpaca template (spec §6), with and without input") {
  PromptTemplate tpl;
  CHECK(tpl.prompt({"Add 2 and 3.", "", "5"}) ==
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:");
  CHECK(tpl.prompt({"Add.", "2 and 3", "5"}) ==
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2 and "
        "3\n\n### Response:");
  CHECK(tpl.target({"x", "", "The answer is: 5"}) == "The answer is: 5\n");
}

TEST_CASE("data: tokenization masks the prompt, appends response + newline + EOS, truncates, drops") {
  const ByteTokenizer tok;
  const PromptTemplate tpl;
  const InstructionExample ex{"Q?", "", "A!"};
  const auto t = tokenize_example(ex, tok, tpl, 512);
  REQUIRE(t.has_value());
  const std::string prompt = tpl.prompt(ex);
  const std::size_t P = prompt.size() + 1;  // + BOS
  REQUIRE(t->input_ids.size() == P + 3 + 1);  // "A!\n" + EOS
  CHECK(t->input_ids[0] == 1);
  CHECK(t->input_ids.back() == 2);
  CHECK(t->input_ids[P] == 'A' + 3);
  CHECK(t->input_ids[P + 2] == '\n' + 3);
  for (std::size_t i = 0; i < P; ++i) CHECK(t->labels[i] == kIgnoreIndex);
  for (std::size_t i = P; i < t->labels.size(); ++i) CHECK(t->labels[i] == t->input_ids[i]);
  // truncation keeps the first max_len tokens
  const auto cut = tokenize_example(ex, tok, tpl, static_cast<int>(P) + 1);
  REQUIRE(cut.has_value());
  CHECK(cut->input_ids.size() == P + 1);
  CHECK(cut->labels.back() == 'A' + 3);
  // all targets truncated away → dropped
  CHECK_FALSE(tokenize_example(ex, tok, tpl, static_cast<int>(P)).has_value());
  std::int64_t dropped = -1;
  const auto ds = tokenize_dataset(std::vector<InstructionExample>{ex, {"a much longer instruction here", "", "B"}}, tok,
                                   tpl, static_cast<int>(P) + 1, &dropped);
  CHECK(ds.size() == 1);
  CHECK(dropped == 1);
}

TEST_CASE("data: real tokenizer keeps the prompt as a prefix and EOS as the id") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const Tokenizer tok(llama_test::data_dir() / "llama2_tokenizer" / "tokenizer.model");
  const auto t = tokenize_example({"What is 2+3?", "", "The answer is: 5"}, tok);
  REQUIRE(t.has_value());
  CHECK(t->input_ids.back() == 2);
  CHECK(t->input_ids.front() == 1);
  const auto n_masked = std::count(t->labels.begin(), t->labels.end(), kIgnoreIndex);
  CHECK(n_masked == static_cast<long>(tok.encode(PromptTemplate{}.prompt({"What is 2+3?", "", ""}), true).size()));
  CHECK(tok.decode(t->input_ids).find("### Response:The answer is: 5") != std::string::npos);
}

TEST_CASE("data: loading JSON arrays and JSONL with detected or given field names") {
  SUBCASE("jsonl query/response") {
    const auto p = write_text("jsonl_qr", "d.jsonl",
                              "{\"query\": \"q1\", \"response\": \"r1\"}\n\n{\"query\": \"q2\", \"response\": \"r2\"}\n");
    const auto d = load_instruction_data(p);
    REQUIRE(d.size() == 2);
    CHECK(d[1].instruction == "q2");
    CHECK(d[1].response == "r2");
    CHECK(d[1].input.empty());
  }
  SUBCASE("json array instruction/input/output") {
    const auto p = write_text("json_iio", "d.json",
                              "[{\"instruction\": \"i\", \"input\": \"ctx\", \"output\": \"o\", \"answer\": \"x\"},"
                              " {\"instruction\": \"j\", \"input\": \"\", \"output\": \"p\"}]");
    const auto d = load_instruction_data(p);
    REQUIRE(d.size() == 2);
    CHECK(d[0].input == "ctx");
    CHECK(d[0].response == "o");
    CHECK(d[1].input.empty());
  }
  SUBCASE("question/answer, and an explicit override") {
    const auto p = write_text("qa", "d.jsonl", "{\"question\": \"q\", \"answer\": \"a\", \"alt\": \"z\"}\n");
    CHECK(load_instruction_data(p)[0].response == "a");
    CHECK(load_instruction_data(p, FieldNames{"question", "", "alt"})[0].response == "z");
  }
  SUBCASE("malformed JSONL names file and line") {
    const auto p = write_text("bad_jsonl", "bad.jsonl",
                              "{\"query\": \"q\", \"response\": \"r\"}\n{\"query\": \"q\", \"response\": \"r\"}\n"
                              "{\"query\": \"q\", \"response\": \"r\"\n");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(p), "bad.jsonl:3", "expected one JSON object per line");
    const auto p2 = write_text("bad_jsonl2", "bad2.jsonl",
                               "{\"query\": \"q\", \"response\": \"r\"}\n{\"query\": \"q\"}\n");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(p2), "bad2.jsonl:2", "expected field 'response'");
    const auto p3 = write_text("bad_jsonl3", "bad3.jsonl", "{\"foo\": 1}\n");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(p3), "bad3.jsonl:1", "found keys {foo}");
    const auto p4 = write_text("bad_jsonl4", "bad4.jsonl", "{\"query\": \"q\", \"response\": [1]}\n");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(p4), "bad4.jsonl:1", "to be a string, found array");
    const auto p5 = write_text("bad_json", "bad.json", "[{\"query\": \"q\", \"response\": \"r\"},\n {\"query\": }]");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(p5), "bad.json:2", "invalid JSON");
    LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data("/nonexistent.jsonl"), "not found");
  }
  SUBCASE("shared data sets") {
    if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
    const auto d = llama_test::data_dir();
    CHECK(load_instruction_data(d / "gsm8k" / "train.jsonl").size() == 7473);
    CHECK(load_instruction_data(d / "metamath_eval" / "GSM8K_test.jsonl").size() == 1319);
    const auto math = load_instruction_data(d / "llm_adapters_math" / "math_data.json");
    CHECK(math.size() == 3260);
    CHECK_FALSE(math[0].response.empty());
  }
}

TEST_CASE("data: deterministic shuffle, disjoint covering shards, equal-size shards") {
  const auto p1 = shuffled_indices(1000, 7, 0);
  CHECK(p1 == shuffled_indices(1000, 7, 0));
  CHECK(p1 != shuffled_indices(1000, 8, 0));
  CHECK(p1 != shuffled_indices(1000, 7, 1));
  auto sorted = p1;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 1000; ++i) CHECK(sorted[i] == i);
  // golden prefix: the order must not depend on the platform / standard library
  const std::vector<std::int64_t> head(p1.begin(), p1.begin() + 5);
  INFO("first five: " << head[0] << " " << head[1] << " " << head[2] << " " << head[3] << " " << head[4]);
  CHECK(head == std::vector<std::int64_t>{146, 589, 856, 994, 630});

  const auto data = numbered(10);
  for (bool even : {false, true}) {
    CAPTURE(even);
    std::multiset<std::int64_t> all;
    std::set<std::int64_t> sizes;
    for (int s = 0; s < 3; ++s) {
      LoaderOptions o;
      o.num_shards = 3;
      o.shard_index = s;
      o.even_shards = even;
      o.seed = 11;
      DataLoader dl(data, o);
      const auto order = dl.shard_order(0);
      CHECK(static_cast<std::int64_t>(order.size()) == dl.shard_size());
      sizes.insert(dl.shard_size());
      all.insert(order.begin(), order.end());
    }
    CHECK(std::set<std::int64_t>(all.begin(), all.end()).size() == all.size());  // disjoint
    if (even) {
      CHECK(all.size() == 9);
      CHECK(sizes.size() == 1);
    } else {
      CHECK(all.size() == 10);  // covering
    }
  }
  LoaderOptions bad;
  bad.num_shards = 2;
  bad.shard_index = 2;
  LLAMA_CHECK_THROWS_WITH_ALL(DataLoader(data, bad), "shard_index", "2");
}

TEST_CASE("data: micro-batches are right-padded and a saved position resumes exactly") {
  const auto data = numbered(11);
  LoaderOptions o;
  o.micro_batch = 4;
  o.pad_id = 0;
  o.seed = 3;
  DataLoader dl(data, o);
  CHECK(dl.batches_per_epoch() == 3);
  const Batch b = dl.next();
  b.validate();
  CHECK(b.batch_size == 4);
  for (int r = 0; r < b.batch_size; ++r) {
    const auto& ex = (*data)[b.example_ids[r]];
    CHECK(b.lengths[r] == static_cast<int>(ex.input_ids.size()));
    for (int t = 0; t < b.seq_len; ++t) {
      const auto i = static_cast<std::size_t>(r) * b.seq_len + t;
      if (t < b.lengths[r]) {
        CHECK(b.input_ids[i] == ex.input_ids[t]);
        CHECK(b.labels[i] == ex.labels[t]);
      } else {
        CHECK(b.input_ids[i] == 0);
        CHECK(b.labels[i] == kIgnoreIndex);
      }
    }
  }
  dl.next();
  const Batch tail = dl.next();
  CHECK(tail.batch_size == 3);  // 11 = 4 + 4 + 3
  const DataPosition pos = dl.position();
  std::vector<std::vector<std::int64_t>> expect;
  for (int i = 0; i < 5; ++i) expect.push_back(dl.next().example_ids);  // crosses into epochs 1 and 2
  DataLoader resumed(data, o);
  resumed.seek(pos);
  for (int i = 0; i < 5; ++i) CHECK(resumed.next().example_ids == expect[i]);
  // a new epoch reshuffles
  DataLoader e(data, o);
  e.seek({1, 0});
  CHECK(e.next().position == DataPosition{1, 0});
  LLAMA_CHECK_THROWS_WITH_ALL(e.seek({0, 99}), "index", "99");
}
