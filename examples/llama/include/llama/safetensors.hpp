#pragma once
/// \file safetensors.hpp
/// A safetensors reader/writer pair. Format: 8-byte little-endian header length N, N bytes of JSON
/// `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data.
/// The reader converts F32 / BF16 / F16 (and I32 / I64) to float; the writer emits F32 or BF16
/// or F16 (round-to-nearest-even) and writes atomically (name.tmp, fsync, rename).

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// Element types the reader understands.
enum class DType { F32, BF16, F16, I32, I64 };

/// Bytes per element of a dtype.
inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::I64: return 8;
  }
  return 0;
}

/// The safetensors spelling of a dtype ("F32", "BF16", ...).
inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

/// Parses a safetensors dtype string; throws naming the tensor for anything unsupported.
inline DType parse_dtype(const std::string& s, const std::string& tensor) {
  if (s == "F32") return DType::F32;
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  throw LlamaError(cat("tensor '", tensor, "': expected dtype F32, BF16, F16, I32 or I64, found ", s));
}

/// bf16 bits -> float (exact).
inline float bf16_to_float(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }

/// float -> bf16 bits, round to nearest even (NaN kept quiet).
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// float -> IEEE half bits, round to nearest even (overflow to ±inf, subnormals kept, NaN quiet).
inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;           // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;          // >= 65520 rounds to inf
  if (a < 0x38800000u)                                  // below 2^-14: a half subnormal (or 0)
    return sign | static_cast<std::uint16_t>(std::nearbyint(std::bit_cast<float>(a) * 16777216.0f));
  a -= 0x38000000u;                                     // rebias the exponent (127 → 15)
  a += 0xfffu + ((a >> 13) & 1u);                       // round the 23-bit mantissa to 10 bits
  return sign | static_cast<std::uint16_t>(a >> 13);
}

/// IEEE half bits -> float (exact, subnormals included).
inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400u));
      bits = sign | ((127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return std::bit_cast<float>(bits);
}

/// Converts `n` stored values of `dtype` at `src` (any alignment) to float. The 16-bit conversions
/// of large arrays run on every OpenMP thread (a 7B checkpoint: 6.7e9 elements; elementwise, so the
/// result does not depend on the thread count).
inline void convert_to_float(DType dtype, const char* src, std::int64_t n, float* out) {
  switch (dtype) {
    case DType::F32: std::memcpy(out, src, static_cast<std::size_t>(n) * 4); break;
    case DType::BF16:
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n >= (std::int64_t(1) << 20))
#endif
      for (std::int64_t i = 0; i < n; ++i) { std::uint16_t h; std::memcpy(&h, src + 2 * i, 2); out[i] = bf16_to_float(h); }
      break;
    case DType::F16:
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n >= (std::int64_t(1) << 20))
#endif
      for (std::int64_t i = 0; i < n; ++i) { std::uint16_t h; std::memcpy(&h, src + 2 * i, 2); out[i] = f16_to_float(h); }
      break;
    case DType::I32:
      for (std::int64_t i = 0; i < n; ++i) { std::int32_t v; std::memcpy(&v, src + 4 * i, 4); out[i] = static_cast<float>(v); }
      break;
    case DType::I64:
      for (std::int64_t i = 0; i < n; ++i) { std::int64_t v; std::memcpy(&v, src + 8 * i, 8); out[i] = static_cast<float>(v); }
      break;
  }
}

/// One entry of a safetensors header.
struct TensorInfo {
  std::string name;                ///< tensor name
  DType dtype = DType::F32;        ///< stored element type
  std::vector<std::int64_t> shape; ///< stored shape
  std::uint64_t begin = 0;         ///< byte offset into the data section
  std::uint64_t end = 0;           ///< one past the last byte
  /// Number of elements (product of the shape; 1 for a scalar).
  [[nodiscard]] std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

/// A safetensors file, memory-mapped. Construction validates the header completely (JSON,
/// dtypes, offsets inside the file, byte counts matching shapes), so later reads cannot fail.
class SafetensorsFile {
 public:
  /// Reads and validates `path`; throws LlamaError on a missing, truncated or corrupt file.
  explicit SafetensorsFile(const std::filesystem::path& path) : path_(path), bytes_(path) {
    const std::string where = path.string();
    if (bytes_.size() < 8)
      throw LlamaError(cat(where, ": truncated safetensors file: expected at least 8 bytes of header length, found ",
                           bytes_.size(), " bytes"));
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes_.data()[i]);
    if (n > bytes_.size() - 8)
      throw LlamaError(cat(where, ": truncated or corrupt safetensors file: header says ", n,
                           " bytes of JSON, but only ", bytes_.size() - 8, " bytes follow"));
    data_offset_ = 8 + n;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes_.data() + 8, bytes_.data() + data_offset_);
    } catch (const nlohmann::json::parse_error& e) {
      throw LlamaError(cat(where, ": corrupt safetensors header: expected JSON, parse failed (", e.what(), ")"));
    }
    if (!header.is_object())
      throw LlamaError(cat(where, ": corrupt safetensors header: expected a JSON object, found ", header.type_name()));
    const std::uint64_t data_size = bytes_.size() - data_offset_;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it.value().is_object())
          for (auto m = it.value().begin(); m != it.value().end(); ++m)
            if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
        continue;
      }
      const auto& v = it.value();
      TensorInfo info;
      info.name = it.key();
      try {
        info.dtype = parse_dtype(v.at("dtype").get<std::string>(), info.name);
        info.shape = v.at("shape").get<std::vector<std::int64_t>>();
        const auto off = v.at("data_offsets").get<std::vector<std::uint64_t>>();
        if (off.size() != 2) throw LlamaError("data_offsets must have 2 entries");
        info.begin = off[0];
        info.end = off[1];
      } catch (const nlohmann::json::exception& e) {
        throw LlamaError(cat(where, ": corrupt safetensors header entry for '", info.name,
                             "': expected {dtype, shape, data_offsets}, found ", v.dump(), " (", e.what(), ")"));
      }
      if (info.end < info.begin || info.end > data_size)
        throw LlamaError(cat(where, ": truncated or corrupt file: tensor '", info.name, "' needs bytes [",
                             info.begin, ", ", info.end, ") of the data section, but it has ", data_size, " bytes"));
      const std::uint64_t expect = static_cast<std::uint64_t>(info.numel()) * dtype_size(info.dtype);
      if (info.end - info.begin != expect)
        throw LlamaError(cat(where, ": tensor '", info.name, "' of shape ", shape_string(info.shape), " ",
                             dtype_name(info.dtype), " needs ", expect, " bytes, found ", info.end - info.begin));
      tensors_.emplace(info.name, std::move(info));
    }
  }

  /// The file this was read from.
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  /// All tensors, by name.
  [[nodiscard]] const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  /// `__metadata__` string entries.
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Whether a tensor exists.
  [[nodiscard]] bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// Header entry of `name`; throws naming the tensor and file if absent.
  [[nodiscard]] const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end())
      throw LlamaError(cat(path_.string(), ": expected tensor '", name, "', not found in the checkpoint"));
    return it->second;
  }

  /// Converts tensor `name` to float into `out` (exactly numel() floats).
  void read_into(const std::string& name, float* out) const {
    const TensorInfo& t = info(name);
    convert_to_float(t.dtype, raw(name), t.numel(), out);
  }
  /// The stored bytes of tensor `name` (its dtype and shape: info(name)); valid while this lives.
  [[nodiscard]] const char* raw(const std::string& name) const { return bytes_.data() + data_offset_ + info(name).begin; }

  /// Tensor `name` as a float vector.
  [[nodiscard]] std::vector<float> read(const std::string& name) const {
    std::vector<float> out(static_cast<std::size_t>(info(name).numel()));
    read_into(name, out.data());
    return out;
  }

  /// Reads tensor `name` into a `(rows, cols)` matrix (a 1-D tensor with rows == 1 or cols == 1 is
  /// accepted as a row / column). Throws naming the tensor, expected and found shape on mismatch.
  [[nodiscard]] Matrix read_matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    const TensorInfo& t = info(name);
    const bool ok = (t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols) ||
                    (t.shape.size() == 1 && ((rows == 1 && t.shape[0] == cols) || (cols == 1 && t.shape[0] == rows)));
    if (!ok)
      throw LlamaError(cat(path_.string(), ": tensor '", name, "' has the wrong shape: expected ",
                           rows == 1 || cols == 1 ? shape_string(std::vector<std::int64_t>{rows * cols})
                                                  : shape_string(std::vector<std::int64_t>{rows, cols}),
                           ", found ", shape_string(t.shape)));
    Matrix m(rows, cols);
    read_into(name, m.data());
    return m;
  }

 private:
  std::filesystem::path path_;
  MappedFile bytes_;  // the whole file, memory-mapped
  std::uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A tensor to write: name, shape, and `numel` contiguous floats — borrowed (`data`), or made when
/// the writer reaches the tensor (`produce`, when `data` is null: it returns numel floats, e.g. in
/// the scratch matrix it is given, valid until the next call), so that a writer holds one tensor at
/// a time (a stored or merged model: llama/stored_linears.hpp).
struct TensorToWrite {
  std::string name;                 ///< tensor name
  std::vector<std::int64_t> shape;  ///< logical shape
  const float* data = nullptr;      ///< numel floats, row-major (or null: produce)
  std::function<const float*(Matrix& scratch)> produce = {};
};

/// Bytes `tensors` take in `dtype` (data only).
inline std::uint64_t safetensors_data_bytes(const std::vector<TensorToWrite>& tensors, DType dtype) {
  std::uint64_t bytes = 0;
  for (const auto& t : tensors) {
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<std::uint64_t>(d);
    bytes += n * dtype_size(dtype);
  }
  return bytes;
}

/// Writes tensors to a safetensors file, converting to `dtype` (F32, BF16 or F16, round to nearest
/// even), atomically (AtomicFileWriter: `path.tmp`, fsync, rename). Tensors are stored in the given
/// order, 8-byte aligned header. One tensor at a time: the writer holds at most one produced tensor
/// and one converted copy.
inline void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                              DType dtype = DType::F32,
                              const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw LlamaError(cat("write_safetensors: expected dtype F32, BF16 or F16, found ", dtype_name(dtype)));
  for (const auto& t : tensors)
    if (!t.data && !t.produce) throw LlamaError(cat("write_safetensors: tensor '", t.name, "' has neither data nor a producer"));
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    const std::uint64_t bytes = static_cast<std::uint64_t>(n) * dtype_size(dtype);
    header[t.name] = {{"dtype", dtype_name(dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  while ((json.size() + 8) % 8 != 0) json.push_back(' ');  // alignment padding, as the Rust writer does
  std::string prefix(8, '\0');
  std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  AtomicFileWriter out(path);
  out.write(prefix);
  out.write(json);
  Matrix scratch;
  std::vector<std::uint16_t> half;  // one tensor's 16-bit copy
  for (const auto& t : tensors) {
    std::int64_t count = 1;
    for (auto d : t.shape) count *= d;
    const float* src = t.data ? t.data : t.produce(scratch);
    if (dtype == DType::F32) {
      out.write(std::string_view(reinterpret_cast<const char*>(src), static_cast<std::size_t>(count) * 4));
      continue;
    }
    half.resize(static_cast<std::size_t>(count));
    const bool bf16 = dtype == DType::BF16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (count >= (std::int64_t(1) << 20))
#endif
    for (std::int64_t i = 0; i < count; ++i) half[static_cast<std::size_t>(i)] = bf16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
    out.write(std::string_view(reinterpret_cast<const char*>(half.data()), half.size() * 2));
  }
  out.commit();
}

}  // namespace hdpissa::llama
