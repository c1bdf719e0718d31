// Tokenizer: tok512 and the LLaMA-2 SentencePiece models.

#include <doctest/doctest.h>

#include "llama/tokenizer.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;

TEST_CASE("tokenizer: tok512 and LLaMA-2 load, encode, decode") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto d = llama_test::data_dir();
  const Tokenizer tiny(d / "stories260K" / "tok512.model");
  CHECK(tiny.vocab_size() == 512);
  CHECK(tiny.bos_id() == 1);
  CHECK(tiny.eos_id() == 2);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tiny.encode(text, true);
  REQUIRE(ids.size() > 2);
  CHECK(ids[0] == 1);
  CHECK(tiny.encode(text, false).size() == ids.size() - 1);
  CHECK(tiny.decode(ids) == text);

  const Tokenizer llama2(d / "llama2_tokenizer" / "tokenizer.model");
  CHECK(llama2.vocab_size() == 32000);
  CHECK(llama2.bos_id() == 1);
  CHECK(llama2.eos_id() == 2);
  CHECK(llama2.encode("Hello world", true) == std::vector<std::int32_t>{1, 15043, 3186});  // known LLaMA ids
  CHECK(llama2.decode(llama2.encode("### Response:\nThe answer is: 42", true)) == "### Response:\nThe answer is: 42");
  LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer("/nonexistent.model"), "not found");
  LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "stories260K" / "stories260K.bin"), "SentencePiece");
  LLAMA_CHECK_THROWS_WITH_ALL(tiny.decode({5, 900}), "[0, 512)", "900");
}
