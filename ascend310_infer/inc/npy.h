/**
 * Minimal reader/writer for NumPy .npy files (format versions 1-3, C order).
 *
 * Only what the runner exchanges with Python: little-endian numeric arrays.
 * Every failure throws std::runtime_error whose message starts with the file path,
 * so the caller can print it as one line.
 */
#ifndef PATCHCORE_INFER_NPY_H_
#define PATCHCORE_INFER_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace patchcore {

/** What an .npy header says, plus where the data starts. */
struct NpyHeader {
  std::string descr;           // NumPy dtype string, e.g. "<f4"
  std::vector<int64_t> shape;  // empty for a 0-d array
  size_t data_offset = 0;      // bytes before the array data
  size_t item_size = 0;        // bytes per element

  int64_t ElementCount() const;
};

/** Parse and check the header of `path`: C order, known dtype, file size matching the shape. */
NpyHeader ReadNpyHeader(const std::string &path);

/** Read the data of `path` (header as returned by ReadNpyHeader) into `out`, which must hold ElementCount items. */
void ReadNpyData(const std::string &path, const NpyHeader &header, void *out, size_t out_bytes);

/**
 * Write `data` as an .npy file of dtype `descr` and `shape`, atomically (temporary file + rename).
 * `data_bytes` must equal the element count times the item size of `descr`.
 */
void WriteNpy(const std::string &path, const std::string &descr, const std::vector<int64_t> &shape,
              const void *data, size_t data_bytes);

/** "(1, 3, 224, 224)": shapes in messages look like NumPy's. */
std::string ShapeToString(const std::vector<int64_t> &shape);

}  // namespace patchcore

#endif  // PATCHCORE_INFER_NPY_H_
