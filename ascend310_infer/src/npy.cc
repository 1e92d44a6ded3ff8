#include "npy.h"

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "file_utils.h"

namespace patchcore {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

[[noreturn]] void Fail(const std::string &path, const std::string &problem) {
  throw std::runtime_error(path + ": " + problem);
}

// Item sizes of the little-endian / byte-order-free dtypes this runner reads and writes.
size_t ItemSize(const std::string &descr) {
  static const std::map<std::string, size_t> kSizes = {
    {"<f2", 2}, {"<f4", 4}, {"<f8", 8}, {"|i1", 1}, {"<i2", 2}, {"<i4", 4}, {"<i8", 8},
    {"|u1", 1}, {"<u2", 2}, {"<u4", 4}, {"<u8", 8}, {"|b1", 1}};
  auto it = kSizes.find(descr);
  return it == kSizes.end() ? 0 : it->second;
}

// The text after `'key':` in the header dict, with leading spaces removed.
std::string ValueAfterKey(const std::string &header, const std::string &key, const std::string &path) {
  auto pos = header.find("'" + key + "'");
  if (pos == std::string::npos) Fail(path, "corrupt .npy header: no '" + key + "' entry");
  pos = header.find(':', pos);
  if (pos == std::string::npos) Fail(path, "corrupt .npy header near '" + key + "'");
  pos = header.find_first_not_of(' ', pos + 1);
  return pos == std::string::npos ? std::string() : header.substr(pos);
}

std::vector<int64_t> ParseShape(const std::string &text, const std::string &path) {
  if (text.empty() || text[0] != '(') Fail(path, "corrupt .npy header: bad 'shape'");
  auto close = text.find(')');
  if (close == std::string::npos) Fail(path, "corrupt .npy header: bad 'shape'");
  std::vector<int64_t> shape;
  std::stringstream items(text.substr(1, close - 1));
  std::string item;
  while (std::getline(items, item, ',')) {
    auto first = item.find_first_not_of(' ');
    if (first == std::string::npos) continue;  // trailing comma of a 1-tuple
    size_t used = 0;
    long long dim = -1;
    try {
      dim = std::stoll(item.substr(first), &used);
    } catch (const std::exception &) {
      Fail(path, "corrupt .npy header: bad 'shape'");
    }
    if (dim < 0) Fail(path, "corrupt .npy header: negative dimension");
    shape.push_back(dim);
  }
  return shape;
}

}  // namespace

int64_t NpyHeader::ElementCount() const {
  int64_t count = 1;
  for (auto dim : shape) count *= dim;
  return count;
}

std::string ShapeToString(const std::vector<int64_t> &shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

NpyHeader ReadNpyHeader(const std::string &path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) Fail(path, "cannot open file");
  const auto file_size = static_cast<size_t>(file.tellg());
  file.seekg(0);

  char prefix[kMagicLen + 2] = {};
  if (!file.read(prefix, sizeof(prefix)) || std::memcmp(prefix, kMagic, kMagicLen) != 0) {
    Fail(path, "not a .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(prefix[kMagicLen]);
  size_t header_len = 0;
  size_t len_bytes = 0;
  if (major == 1) {
    len_bytes = 2;
  } else if (major == 2 || major == 3) {
    len_bytes = 4;
  } else {
    Fail(path, "unsupported .npy format version " + std::to_string(major));
  }
  unsigned char len_buf[4] = {};
  if (!file.read(reinterpret_cast<char *>(len_buf), static_cast<std::streamsize>(len_bytes))) {
    Fail(path, "corrupt .npy file (truncated header)");
  }
  for (size_t i = 0; i < len_bytes; ++i) header_len |= static_cast<size_t>(len_buf[i]) << (8 * i);
  std::string header(header_len, '\0');
  if (!file.read(&header[0], static_cast<std::streamsize>(header_len))) {
    Fail(path, "corrupt .npy file (truncated header)");
  }

  NpyHeader result;
  result.data_offset = sizeof(prefix) + len_bytes + header_len;
  const auto descr_text = ValueAfterKey(header, "descr", path);
  auto descr_end = descr_text.find('\'', 1);
  if (descr_text.empty() || descr_text[0] != '\'' || descr_end == std::string::npos) {
    Fail(path, "corrupt .npy header: bad 'descr'");
  }
  result.descr = descr_text.substr(1, descr_end - 1);
  if (result.descr.size() == 3 && result.descr[0] == '=') result.descr[0] = '<';  // native order is little-endian here
  result.item_size = ItemSize(result.descr);
  if (result.item_size == 0) Fail(path, "unsupported .npy dtype '" + result.descr + "'");
  if (ValueAfterKey(header, "fortran_order", path).rfind("False", 0) != 0) {
    Fail(path, "Fortran-ordered .npy arrays are not supported (save a C-contiguous array)");
  }
  result.shape = ParseShape(ValueAfterKey(header, "shape", path), path);

  const size_t data_bytes = static_cast<size_t>(result.ElementCount()) * result.item_size;
  if (file_size != result.data_offset + data_bytes) {
    Fail(path, "corrupt .npy file: " + std::to_string(file_size - result.data_offset) + " data bytes, shape " +
                 ShapeToString(result.shape) + " needs " + std::to_string(data_bytes));
  }
  return result;
}

void ReadNpyData(const std::string &path, const NpyHeader &header, void *out, size_t out_bytes) {
  const size_t data_bytes = static_cast<size_t>(header.ElementCount()) * header.item_size;
  if (data_bytes != out_bytes) {
    Fail(path, "holds " + std::to_string(data_bytes) + " bytes, expected " + std::to_string(out_bytes));
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail(path, "cannot open file");
  file.seekg(static_cast<std::streamoff>(header.data_offset));
  if (!file.read(static_cast<char *>(out), static_cast<std::streamsize>(data_bytes))) {
    Fail(path, "corrupt .npy file (truncated data)");
  }
}

void WriteNpy(const std::string &path, const std::string &descr, const std::vector<int64_t> &shape,
              const void *data, size_t data_bytes) {
  size_t count = 1;
  for (auto dim : shape) count *= static_cast<size_t>(dim);
  if (ItemSize(descr) == 0 || count * ItemSize(descr) != data_bytes) {
    Fail(path, "internal error: " + std::to_string(data_bytes) + " bytes do not fit dtype " + descr +
                 " and shape " + ShapeToString(shape));
  }
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + ShapeToString(shape) + ", }";
  // Version 1.0 layout: magic, version, uint16 header length, header padded with spaces to a
  // multiple of 64 bytes and ended by a newline.
  const size_t unpadded = kMagicLen + 2 + 2 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string bytes(kMagic, kMagicLen);
  bytes.push_back('\x01');
  bytes.push_back('\x00');
  bytes.push_back(static_cast<char>(header.size() & 0xff));
  bytes.push_back(static_cast<char>((header.size() >> 8) & 0xff));
  bytes += header;
  bytes.append(static_cast<const char *>(data), data_bytes);
  WriteFileAtomic(path, bytes);
}

}  // namespace patchcore
