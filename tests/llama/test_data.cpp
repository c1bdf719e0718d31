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

TEST_CASE("data: --pad-to-multiple rounds each micro-batch's length up (capped at max_len), same tokens and labels") {
  const auto data = numbered(11);  // lengths 2..6
  for (const int m : {1, 4, 8}) {
    CAPTURE(m);
    LoaderOptions o;
    o.micro_batch = 3;
    o.seed = 5;
    o.pad_multiple = m;
    o.max_len = 7;  // caps the rounding to 8
    LoaderOptions plain = o;
    plain.pad_multiple = 1;
    DataLoader dl(data, o), ref(data, plain);
    for (int k = 0; k < 6; ++k) {  // two epochs' worth
      const Batch b = dl.next(), r = ref.next();
      b.validate();
      CHECK(b.example_ids == r.example_ids);
      CHECK(b.lengths == r.lengths);
      const int want = m == 1 ? r.seq_len : std::min((r.seq_len + m - 1) / m * m, 7);
      CHECK(b.seq_len == want);
      CHECK(b.seq_len >= r.seq_len);
      for (int row = 0; row < b.batch_size; ++row)
        for (int t = 0; t < b.seq_len; ++t) {
          const auto i = std::size_t(row) * std::size_t(b.seq_len) + std::size_t(t);
          if (t < r.seq_len) {
            const auto j = std::size_t(row) * std::size_t(r.seq_len) + std::size_t(t);
            CHECK(b.input_ids[i] == r.input_ids[j]);
            CHECK(b.labels[i] == r.labels[j]);
          } else {  // the extra padding: pad id, never a target
            CHECK(b.input_ids[i] == o.pad_id);
            CHECK(b.labels[i] == kIgnoreIndex);
          }
        }
    }
  }
  LoaderOptions bad;
  bad.pad_multiple = 0;
  LLAMA_CHECK_THROWS_WITH_ALL(DataLoader(data, bad), "pad_multiple", "0");
}

// ---------------------------------------------------------------- data formats (data_formats.hpp)
#include "llama/data_formats.hpp"

namespace {

/// ByteTokenizer plus what chat templates need: special tokens 300.. and a chat_template text.
struct ChatByteTokenizer : ByteTokenizer {
  std::string jinja;
  std::int32_t bos_id() const { return 1; }
  std::int32_t vocab_size() const { return 310; }
  std::string chat_template() const { return jinja; }
  std::optional<std::int32_t> token_id(std::string_view s) const {
    const char* names[] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                           "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 6; ++i)
      if (s == names[i]) return 300 + i;
    return std::nullopt;
  }
};

using Ids = std::vector<std::int32_t>;
/// Ids of `s` under ByteTokenizer (byte + 3), written out so expectations read as text.
Ids B(std::string_view s) {
  Ids v;
  for (unsigned char c : s) v.push_back(c + 3);
  return v;
}
/// n masked labels.
Ids M(std::size_t n) { return Ids(n, kIgnoreIndex); }
Ids join(std::initializer_list<Ids> parts) {
  Ids v;
  for (const auto& p : parts) v.insert(v.end(), p.begin(), p.end());
  return v;
}

std::vector<TokenizedExample> load_fmt(const std::string& name, const std::string& text, DataFormatOptions o = {},
                                       int max_len = 512, DataLoadReport* rep = nullptr, std::string jinja = "") {
  ChatByteTokenizer tok;
  tok.jinja = std::move(jinja);
  return load_tokenized_data(write_text("fmt_" + name, "d.jsonl", text), o, tok, PromptTemplate{}, max_len, -1, rep);
}

}  // namespace

TEST_CASE("data formats: text (loss on everything) and tokens (pre-tokenized, labels -100)") {
  DataLoadReport rep;
  auto t = load_fmt("text", "{\"text\":\"ab\"}\n{\"text\":\"\"}\n", {}, 512, &rep);
  CHECK(rep.format == DataFormat::text);
  REQUIRE(t.size() == 2);
  CHECK(t[0].input_ids == Ids{1, 'a' + 3, 'b' + 3, 2});
  CHECK(t[0].labels == Ids{1, 'a' + 3, 'b' + 3, 2});
  CHECK(t[1].input_ids == Ids{1, 2});  // BOS, EOS: EOS is a target

  t = load_fmt("tokens", "{\"input_ids\":[5,6,7,8],\"labels\":[-100,-100,7,8]}\n{\"input_ids\":[9,10]}\n"
                         "{\"input_ids\":[5,6],\"labels\":[5,-100]}\n", {}, 512, &rep);
  CHECK(rep.format == DataFormat::tokens);
  CHECK(rep.dropped == 1);  // the third: its only label is at position 0
  REQUIRE(t.size() == 2);
  CHECK(t[0].input_ids == Ids{5, 6, 7, 8});
  CHECK(t[0].labels == Ids{-100, -100, 7, 8});
  CHECK(t[1].labels == Ids{9, 10});
  t = load_fmt("tokens_trunc", "{\"input_ids\":[5,6,7,8],\"labels\":[-100,6,-100,-100]}\n"
                               "{\"input_ids\":[5,6,7,8],\"labels\":[-100,-100,-100,8]}\n", {}, 3, &rep);
  CHECK(rep.dropped == 1);
  REQUIRE(t.size() == 1);
  CHECK(t[0].input_ids == Ids{5, 6, 7});
  CHECK(t[0].labels == Ids{-100, 6, -100});

  SUBCASE("malformed") {
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad1", "{\"input_ids\":[1,2],\"labels\":[1]}\n"), "d.jsonl:1", "labels",
                                "as long as 'input_ids' (2)", "found 1");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad2", "{\"input_ids\":[1,400]}\n"), "input_ids[1]", "[0, 310)", "400");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad3", "{\"input_ids\":[1,-100]}\n"), "input_ids[1]", "-100");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad4", "{\"input_ids\":[1,\"x\"]}\n"), "input_ids[1]", "expected an integer");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad5", "{\"input_ids\":[1,2],\"labels\":[1,-5]}\n"), "labels[1]", "or -100", "-5");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad6", "{\"input_ids\":\"12\"}\n"), "array of integers", "string");
    DataFormatOptions o;
    o.format = "text";
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad7", "{\"text\":3}\n", o), "d.jsonl:1", "'text'", "number");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("bad8", "{\"body\":\"x\"}\n", o), "'text'", "body");
  }
}

TEST_CASE("data formats: alpaca with --prompt-field / --response-field / --input-field") {
  const PromptTemplate tpl;
  DataFormatOptions o;
  o.prompt_field = "q";
  o.response_field = "r";
  DataLoadReport rep;
  auto t = load_fmt("alp", "{\"q\":\"Add.\",\"r\":\"5\"}\n", o, 512, &rep);
  CHECK(rep.format == DataFormat::alpaca);  // detected through the named fields
  REQUIRE(t.size() == 1);
  const std::string prompt = tpl.prompt({"Add.", "", ""});
  CHECK(t[0].input_ids == join({{1}, B(prompt), B("5\n"), {2}}));
  CHECK(t[0].labels == join({M(1 + prompt.size()), B("5\n"), {2}}));
  o.input_field = "ctx";
  t = load_fmt("alp_in", "{\"q\":\"Add.\",\"ctx\":\"2 and 3\",\"r\":\"5\"}\n{\"q\":\"Go.\",\"r\":\"ok\"}\n", o);
  REQUIRE(t.size() == 2);
  const std::string p_in = tpl.prompt({"Add.", "2 and 3", ""});
  CHECK(t[0].labels == join({M(1 + p_in.size()), B("5\n"), {2}}));
  CHECK(t[1].input_ids == join({{1}, B(tpl.prompt({"Go.", "", ""})), B("ok\n"), {2}}));
  // one field flag overrides the detected one; a record without it is an error naming the field
  DataFormatOptions only_response;
  only_response.response_field = "solution2";
  t = load_fmt("alp_one", "{\"question\":\"x\",\"answer\":\"a\",\"solution2\":\"b\"}\n", only_response);
  REQUIRE(t.size() == 1);
  CHECK(t[0].labels == join({M(1 + tpl.prompt({"x", "", ""}).size()), B("b\n"), {2}}));
  LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("alp_missing", "{\"q\":\"x\",\"r\":\"y\"}\n{\"q\":\"x\"}\n", o), "d.jsonl:2",
                              "expected field 'r'");
  // the detection error names the flags, not a C++ type
  LLAMA_CHECK_THROWS_WITH_ALL(load_instruction_data(write_text("alp_err", "d.jsonl", "{\"foo\":1,\"bar\":2}\n")),
                              "bar, foo", "--prompt-field", "--response-field", "--input-field");
}

TEST_CASE("data formats: auto detection from the first record's keys") {
  DataLoadReport rep;
  load_fmt("auto_chat", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n",
           {}, 512, &rep, "{{ '<|im_start|>' }}");
  CHECK(rep.format == DataFormat::chat);
  CHECK(rep.chat_template == "chatml");
  load_fmt("auto_alp", "{\"question\":\"q\",\"answer\":\"a\",\"text\":\"t\"}\n", {}, 512, &rep);
  CHECK(rep.format == DataFormat::alpaca);
  LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("auto_bad", "{\"foo\":1,\"bar\":\"x\"}\n"), "d.jsonl:1",
                              "cannot detect the data format", "{bar, foo}", "--data-format");
  LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("auto_arr", "[1]\n"), "element 0", "expected a JSON object");
  DataFormatOptions o;
  o.format = "json";
  LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("auto_flag", "{\"text\":\"x\"}\n", o), "--data-format", "'json'");
}

TEST_CASE("data formats: chat templates, loss on assistant turns only") {
  DataFormatOptions o;
  o.format = "chat";
  const std::string two = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\" ok \"}]}\n";
  SUBCASE("llama3") {
    o.chat_template = "llama3";
    auto t = load_fmt("c_llama3", two, o);
    REQUIRE(t.size() == 1);
    // <|begin_of_text|> <|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>
    // <|start_header_id|>assistant<|end_header_id|>\n\n [ok<|eot_id|>]   (content trimmed)
    CHECK(t[0].input_ids == join({{300, 301}, B("user"), {302}, B("\n\nhi"), {303, 301}, B("assistant"), {302}, B("\n\n"),
                                  B("ok"), {303}}));
    CHECK(t[0].labels == join({M(2 + 4 + 1 + 4 + 2 + 9 + 1 + 2), B("ok"), {303}}));
  }
  SUBCASE("chatml, ShareGPT conversations, system and two turns") {
    o.chat_template = "chatml";
    auto t = load_fmt("c_chatml",
                      "{\"conversations\":[{\"from\":\"system\",\"value\":\"S\"},{\"from\":\"human\",\"value\":\"q\"},"
                      "{\"from\":\"gpt\",\"value\":\"a\"},{\"from\":\"human\",\"value\":\"r\"},{\"from\":\"gpt\",\"value\":\"b\"}]}\n",
                      o);
    REQUIRE(t.size() == 1);
    CHECK(t[0].input_ids == join({{304}, B("system\nS"), {305}, B("\n"), {304}, B("user\nq"), {305}, B("\n"), {304},
                                  B("assistant\n"), B("a"), {305}, B("\n"), {304}, B("user\nr"), {305}, B("\n"), {304},
                                  B("assistant\n"), B("b"), {305}, B("\n")}));
    CHECK(t[0].labels == join({M(1 + 8 + 1 + 1 + 1 + 6 + 1 + 1 + 1 + 10), B("a"), {305}, M(1 + 1 + 6 + 1 + 1 + 1 + 10),
                               B("b"), {305}, M(1)}));
  }
  SUBCASE("mistral with a system message") {
    o.chat_template = "mistral";
    auto t = load_fmt("c_mistral",
                      "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"u\"},"
                      "{\"role\":\"assistant\",\"content\":\"A\"}]}\n",
                      o);
    REQUIRE(t.size() == 1);
    CHECK(t[0].input_ids == join({{1}, B("[INST] S\n\nu [/INST]"), B("A"), {2}}));
    CHECK(t[0].labels == join({M(1 + 19), B("A"), {2}}));
  }
  SUBCASE("alpaca") {
    o.chat_template = "alpaca";
    auto t = load_fmt("c_alpaca", two, o);
    REQUIRE(t.size() == 1);
    const std::string prompt = PromptTemplate{}.prompt({"hi", "", ""});
    CHECK(t[0].input_ids == join({{1}, B(prompt), B(" ok \n"), {2}}));
    CHECK(t[0].labels == join({M(1 + prompt.size()), B(" ok \n"), {2}}));
  }
  SUBCASE("auto: the tokenizer's template, recognised by its markers") {
    DataLoadReport rep;
    load_fmt("c_auto1", two, o, 512, &rep, "{% for m in messages %}<|start_header_id|>...{% endfor %}");
    CHECK(rep.chat_template == "llama3");
    load_fmt("c_auto2", two, o, 512, &rep, "{{ bos_token }}[INST] {{ m }} [/INST]");
    CHECK(rep.chat_template == "mistral");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("c_auto3", two, o), "--chat-template auto", "no chat_template",
                                "--chat-template llama3|mistral|chatml|alpaca");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("c_auto4", two, o, 512, nullptr, "{{ unknown }}"), "not recognisably");
  }
  SUBCASE("truncation and dropping") {
    o.chat_template = "chatml";
    DataLoadReport rep;
    // the assistant content starts at position 1 + 7 + 1 + 1 + 1 + 10 = 21: max_len 21 leaves no label
    auto t = load_fmt("c_trunc", two + two, o, 21, &rep);
    CHECK(t.empty());
    CHECK(rep.dropped == 2);
    t = load_fmt("c_trunc2", two, o, 22, &rep);
    REQUIRE(t.size() == 1);
    CHECK(t[0].labels.back() == ' ' + 3);
  }
  SUBCASE("malformed") {
    o.chat_template = "chatml";
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m1", "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n", o),
                                "d.jsonl:1", "message 0", "'robot'");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m2", "{\"messages\":\"hi\"}\n", o), "'messages'", "non-empty array", "string");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m3", "{\"messages\":[]}\n", o), "an empty array");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m4", "{\"messages\":[{\"role\":\"user\",\"content\":5}]}\n", o), "messages[0]",
                                "'role' and 'content'");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m5", "{\"conversations\":[{\"from\":\"alien\",\"value\":\"x\"}]}\n", o),
                                "conversations[0]", "'alien'");
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m6", "{\"text\":\"x\"}\n", o), "'messages' or 'conversations'", "text");
    o.chat_template = "mistral";
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m7", "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}]}\n", o),
                                "message 0", "alternating", "'assistant'");
    o.chat_template = "vicuna";
    LLAMA_CHECK_THROWS_WITH_ALL(load_fmt("m8", two, o), "--chat-template", "'vicuna'");
    // a tokenizer without the template's special tokens
    o.chat_template = "llama3";
    struct NoSpecial : ChatByteTokenizer {
      std::optional<std::int32_t> token_id(std::string_view) const { return std::nullopt; }
    } none;
    LLAMA_CHECK_THROWS_WITH_ALL(load_tokenized_data(write_text("m9", "d.jsonl", two), o, none, PromptTemplate{}, 512),
                                "chat template llama3", "<|start_header_id|>");
  }
}
