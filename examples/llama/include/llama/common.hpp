#pragma once
/// \file common.hpp
/// Shared vocabulary of the LLaMA example: float matrix types (row-major, PyTorch layout), the
/// error type, and small I/O helpers (whole-file reads, atomic writes).
///
/// Every tensor is fp32 in memory. A weight `W` is `(out, in)` and a linear computes `Y = X Wᵀ`
/// with `X` `(tokens, in)`, exactly like `torch.nn.Linear`.

#include <Eigen/Core>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hdpissa/core/error.hpp"

/// OpenMP pragma that vanishes (without -Wunknown-pragmas noise) when OpenMP is off.
#if defined(_OPENMP)
#define HDPISSA_LLAMA_OMP(directive) _Pragma(#directive)
#else
#define HDPISSA_LLAMA_OMP(directive)
#endif

namespace hdpissa::llama {

/// Row-major float matrix; a weight is `(out, in)`, activations are `(tokens, features)`.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Float column vector (norm weights, per-row statistics).
using Vector = Eigen::VectorXf;
/// Mutable view of a row-major float matrix (any outer stride, e.g. a block of columns).
using MatrixRef = Eigen::Ref<Matrix, 0, Eigen::OuterStride<>>;
/// Read-only view of a row-major float matrix (any outer stride).
using ConstMatrixRef = Eigen::Ref<const Matrix, 0, Eigen::OuterStride<>>;

/// The label value excluded from the loss (PyTorch's `ignore_index`).
inline constexpr std::int32_t kIgnoreIndex = -100;

/// Every failure of the LLaMA example (bad checkpoint, bad data, bad arguments). The message says
/// what was expected and what was found, and names the file / tensor / line involved.
class LlamaError : public hdpissa::Error {
 public:
  using hdpissa::Error::Error;
};

/// The library's message builder: `cat("expected ", a, ", found ", b)`.
using hdpissa::cat;

/// Formats a shape as `[a, b, c]`.
template <class Int>
std::string shape_string(const std::vector<Int>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

/// Reads a whole file into memory; throws LlamaError naming the file when it cannot.
inline std::vector<char> read_file_bytes(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw LlamaError(cat("file not found: ", path.string()));
  if (std::filesystem::is_directory(path, ec))
    throw LlamaError(cat("expected a file, found a directory: ", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LlamaError(cat("cannot open ", path.string(), ": ", std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  in.seekg(0, std::ios::beg);
  std::vector<char> bytes(size);
  if (size && !in.read(bytes.data(), static_cast<std::streamsize>(size)))
    throw LlamaError(cat("cannot read ", size, " bytes from ", path.string()));
  return bytes;
}

/// A read-only memory map of a whole file (large checkpoints are converted tensor by tensor
/// without first copying the file into memory). Move-only.
class MappedFile {
 public:
  /// Maps `path`; throws LlamaError naming the file when it is missing or unreadable.
  explicit MappedFile(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw LlamaError(cat("file not found: ", path.string()));
    if (std::filesystem::is_directory(path, ec))
      throw LlamaError(cat("expected a file, found a directory: ", path.string()));
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw LlamaError(cat("cannot open ", path.string(), ": ", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw LlamaError(cat("cannot stat ", path.string(), ": ", std::strerror(errno)));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw LlamaError(cat("cannot map ", path.string(), ": ", std::strerror(err)));
      }
      data_ = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr; o.size_ = 0; }
  MappedFile& operator=(MappedFile&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }
  /// First byte (nullptr for an empty file).
  [[nodiscard]] const char* data() const { return data_; }
  /// Size in bytes.
  [[nodiscard]] std::size_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Reads a whole text file.
inline std::string read_file_text(const std::filesystem::path& path) {
  auto bytes = read_file_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

/// `p` absolute and lexically normal, without a trailing separator: "runs/x/", "runs/./x" and
/// "runs/x" name the same directory, "." the current one. Every path the tools write, lock or compare
/// goes through it, so that the names built from a directory ("<dir>.tmp-<pid>", "<dir>.lock") land
/// beside it, never inside it (a trailing "/" used to put them inside and fail the final rename).
inline std::filesystem::path normal_path(const std::filesystem::path& p) {
  std::filesystem::path a = std::filesystem::absolute(p).lexically_normal();
  if (!a.has_filename() && a.has_relative_path()) a = a.parent_path();
  return a;
}

/// fsyncs a file or directory by path (best effort for directories on filesystems that refuse).
inline void fsync_path(const std::filesystem::path& path, bool is_dir = false) {
  const int fd = ::open(path.c_str(), is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) {
    if (is_dir) return;
    throw LlamaError(cat("cannot open ", path.string(), " for fsync: ", std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && !is_dir)
    throw LlamaError(cat("fsync of ", path.string(), " failed: ", std::strerror(err)));
}

/// A file written atomically, piece by piece: the bytes go to `path.tmp`; commit() fsyncs it,
/// renames it over `path` and fsyncs the parent directory, so a crash leaves either the old file or
/// the complete new one, never a truncated file under the final name. Destroyed without commit()
/// (an exception while writing), the temporary file is removed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path) : path_(std::move(path)), tmp_(path_.string() + ".tmp") {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw LlamaError(cat("cannot create ", tmp_.string(), ": ", std::strerror(errno)));
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter() {
    if (!f_) return;
    std::fclose(f_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
  /// Appends `piece`.
  void write(std::string_view piece) {
    if (!piece.empty() && std::fwrite(piece.data(), 1, piece.size(), f_) != piece.size())
      fail(cat("short write to ", tmp_.string(), ": ", std::strerror(errno)));
  }
  /// Flushes, fsyncs and renames the file into place.
  void commit() {
    if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) fail(cat("cannot flush ", tmp_.string(), ": ", std::strerror(errno)));
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) {
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
      throw LlamaError(cat("cannot close ", tmp_.string()));
    }
    std::error_code ec;
    std::filesystem::rename(tmp_, path_, ec);
    if (ec) throw LlamaError(cat("cannot rename ", tmp_.string(), " to ", path_.string(), ": ", ec.message()));
    const auto parent = path_.has_parent_path() ? path_.parent_path() : std::filesystem::path(".");
    fsync_path(parent, /*is_dir=*/true);
  }

 private:
  [[noreturn]] void fail(const std::string& msg) {
    std::fclose(f_);
    f_ = nullptr;
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
    throw LlamaError(msg);
  }
  std::filesystem::path path_, tmp_;
  std::FILE* f_ = nullptr;
};

/// Writes pieces of bytes to `path` atomically (AtomicFileWriter).
inline void write_file_atomic(const std::filesystem::path& path,
                              const std::vector<std::string_view>& pieces) {
  AtomicFileWriter f(path);
  for (const auto piece : pieces) f.write(piece);
  f.commit();
}

/// Convenience overload for a single buffer.
inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  write_file_atomic(path, std::vector<std::string_view>{bytes});
}

/// Sets the OpenMP / Eigen thread count: `requested` (> 0), else OMP_NUM_THREADS, else one thread
/// when `narrow` (tiny models lose more to synchronisation than they gain). Returns the count in
/// effect (1 without OpenMP).
inline int configure_threads(int requested, bool narrow) {
#ifdef _OPENMP
  if (requested > 0) omp_set_num_threads(requested);
  else if (!std::getenv("OMP_NUM_THREADS") && narrow) omp_set_num_threads(1);
  return omp_get_max_threads();
#else
  (void)requested, (void)narrow;
  return 1;
#endif
}

}  // namespace hdpissa::llama
